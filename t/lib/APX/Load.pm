package APX::Load;

# Concurrent clients for the scale, lifecycle and slow-client tests: many
# raw HTTP/1.1 connections driven from one process (non-blocking sockets,
# IO::Poll), a non-blocking response parser, helpers to run one client in
# a forked process (slow readers, Slowloris, slow uploads) while the test
# process drives others, and the few blocking helpers those tests need
# (also over TLS: reads check IO::Socket::SSL's pending bytes).
#
#   use APX::Load qw(:all);
#   my @c = map { { reqs => [get_req('/s/delay/1000/100')] } } 1 .. 2000;
#   multiplex(port => $h->port, conns => \@c, keep_open => 1,
#             tick => sub { ... }, tick_every => 0.2);
#   # each $c[i]{resps}[j] = { status, headers => {lc => v}, body, raw }
#
#   my $job = spawn(sub { ...; print "ready\n"; ...; return "bytes=123" });
#   wait_line($job, qr/^ready/, 5);  my $res = finish($job, 30);
#
# Processes it forks leave with POSIX::_exit (no END blocks: no Test::More
# output, no APX::Httpd DESTROY stopping the server from the child).

use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use IO::Poll qw(POLLIN POLLOUT POLLERR POLLHUP);
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_ERROR SO_RCVBUF IPPROTO_TCP TCP_NODELAY
              pack_sockaddr_in inet_aton);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use POSIX ();
use Time::HiRes qw(sleep time);
use Exporter 'import';

our @EXPORT_OK = qw(pattern_body start_slowd stop_slowd take_response read_response wait_eof
                    client get_req request status wait_for nb_connect multiplex
                    spawn wait_line finish raise_fd_limit);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $PATTERN = join('', 0 .. 9, 'A' .. 'Z', 'a' .. 'z') . "-\n";

# slowd's body: byte i is PATTERN[i % 64]
sub pattern_body { my ($n) = @_; substr($PATTERN x (int($n / 64) + 1), 0, $n) }

# Makes sure this process may open $want fds: BSD::Resource when
# installed, else re-executes the test under `sh -c 'ulimit -n ...'`.
# Returns the limit in force.
sub fd_limit {
    my $l = `sh -c 'ulimit -n'` // '';
    return $l =~ /unlimited/ ? 1 << 30 : $l + 0;
}

sub raise_fd_limit {
    my ($want) = @_;
    my $have = fd_limit();
    return $have if $have >= $want;
    my $ok = eval {
        require BSD::Resource;
        BSD::Resource::setrlimit(BSD::Resource::RLIMIT_NOFILE(), $want, $want);
    };
    return fd_limit() if $ok;
    if (!$ENV{APX_ULIMIT_REEXEC}) {
        $ENV{APX_ULIMIT_REEXEC} = 1;
        exec 'sh', '-c', "ulimit -n $want 2>/dev/null; exec \"\$0\" \"\$@\"",
            $^X, (map { "-I$_" } grep { !ref } @INC), $0, @ARGV;
    }
    return $have;
}

my @slowds;

# slowd (bench/slowd.c) on a kernel-chosen port: { pid, port, fh }.
sub start_slowd {
    require APX::Httpd;
    my $bin = $ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd';
    die "$bin is not built (make -C bench slowd)\n" unless -x $bin;
    my $pid = open(my $out, '-|', $bin, '-p', '0', '-q') or die "slowd: $!";
    my $line = <$out> // '';
    my ($port) = $line =~ /listening on 127\.0\.0\.1:(\d+)/ or die "slowd did not start: $line";
    my $sd = { pid => $pid, port => $port, fh => $out, owner => $$ };
    push @slowds, $sd;
    return $sd;
}

sub stop_slowd {
    my ($sd) = @_;
    return unless $sd && $sd->{pid} && $sd->{owner} == $$;
    kill 'TERM', $sd->{pid};
    close $sd->{fh};    # waits for it
    $sd->{pid} = 0;
}

END { local $?; stop_slowd($_) for @slowds }

# One complete response at the front of $$buf, removed from it; undef while
# it is incomplete. Without framing the body runs to EOF ($eof true).
sub take_response {
    my ($buf, $eof, $head_only) = @_;
    my $hl = index($$buf, "\r\n\r\n");
    return undef if $hl < 0;
    my ($sl, @lines) = split /\r\n/, substr($$buf, 0, $hl);
    my %h;
    for (@lines) {
        next unless /^([^:]+):\s*(.*?)\s*$/;
        my $k = lc $1;
        $h{$k} = exists $h{$k} ? "$h{$k}, $2" : $2;
    }
    my ($status) = ($sl // '') =~ m{^HTTP/1\.\d (\d{3})};
    $status //= 0;
    my $pos = $hl + 4;
    my $body = '';
    if ($head_only || $status =~ /^(1..|204|304)$/) {
    }
    elsif (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        while (1) {
            my $e = index($$buf, "\r\n", $pos);
            return undef if $e < 0;
            my ($hex) = substr($$buf, $pos, $e - $pos) =~ /^([0-9a-fA-F]+)/;
            return { status => -1, error => 'bad chunk', headers => \%h, body => $body }
                unless defined $hex;
            my $size = hex $hex;
            $pos = $e + 2;
            if (!$size) {   # trailers up to an empty line
                while (1) {
                    my $te = index($$buf, "\r\n", $pos);
                    return undef if $te < 0;
                    my $empty = $te == $pos;
                    $pos = $te + 2;
                    last if $empty;
                }
                last;
            }
            return undef if length($$buf) < $pos + $size + 2;
            $body .= substr($$buf, $pos, $size);
            $pos += $size + 2;
        }
    }
    elsif (defined $h{'content-length'}) {
        return undef if length($$buf) < $pos + $h{'content-length'};
        $body = substr($$buf, $pos, $h{'content-length'});
        $pos += $h{'content-length'};
    }
    else {
        return undef unless $eof;
        $body = substr($$buf, $pos);
        $pos = length $$buf;
    }
    my $r = { status => $status, headers => \%h, body => $body, raw => substr($$buf, 0, $pos) };
    substr($$buf, 0, $pos, '');
    return $r;
}

sub can_read {
    my ($s, $timeout) = @_;
    return 1 if $s->can('pending') && $s->pending;
    return IO::Select->new($s)->can_read($timeout);
}

# Blocking read of one response (plain or IO::Socket::SSL socket); undef on
# timeout or EOF before a whole response.
sub read_response {
    my ($s, $buf, $timeout, $head_only) = @_;
    my $deadline = time + ($timeout // 10);
    my $eof = 0;
    while (1) {
        my $r = take_response($buf, $eof, $head_only);
        return $r if $r;
        return undef if $eof;
        my $left = $deadline - time;
        return undef if $left <= 0;
        next unless can_read($s, $left);
        my $n = sysread($s, $$buf, 65536, length $$buf);
        next if !defined $n && ($!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR});
        $eof = 1 if !$n;
    }
}

# Waits until the peer closes (EOF or reset). Returns (closed, bytes read
# meanwhile, seconds waited).
sub wait_eof {
    my ($s, $timeout) = @_;
    my $t0 = time;
    my $deadline = $t0 + $timeout;
    my $data = '';
    while ((my $left = $deadline - time) > 0) {
        next unless can_read($s, $left);
        my $n = sysread($s, $data, 65536, length $data);
        next if !defined $n && ($!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR});
        return (1, $data, time - $t0) if !$n;
    }
    return (0, $data, time - $t0);
}

sub client {
    my ($port, %o) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                  Timeout => 5) or die "connect $port: $!";
    binmode $s;
    $s->autoflush(1);
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    return $s;
}

sub get_req {
    my ($path, %h) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         . join('', map { "$_: $h{$_}\r\n" } sort keys %h) . "\r\n";
}

# One request on a fresh connection; the parsed response or undef.
sub request {
    my ($port, $bytes, $timeout) = @_;
    my $s = eval { client($port) } or return undef;
    local $SIG{PIPE} = 'IGNORE';
    print $s $bytes;
    my $buf = '';
    my $r = read_response($s, \$buf, $timeout);
    close $s;
    return $r;
}

# The module's figures (/apx-status) of the child that answers:
# { ParkedNow => N, ... } ("AsyncProxy" stripped), {} when it fails.
sub status {
    my ($port) = @_;
    my $r = request($port, get_req('/apx-status', Connection => 'close'), 10);
    return {} unless $r && $r->{status} == 200;
    return { $r->{body} =~ /^AsyncProxy(\w+): (\S+)$/mg };
}

# Polls $cond every 50 ms for up to $secs s; true if it held.
sub wait_for {
    my ($cond, $secs) = @_;
    my $end = time + $secs;
    while (time < $end) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return $cond->() ? 1 : 0;
}

sub nb_connect {
    my ($port, %o) = @_;
    socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) if $o{rcvbuf};
    my $fl = fcntl($s, F_GETFL, 0);
    fcntl($s, F_SETFL, $fl | O_NONBLOCK) or die "fcntl: $!";
    connect($s, pack_sockaddr_in($port, inet_aton('127.0.0.1'))) or $!{EINPROGRESS}
        or die "connect: $!";
    binmode $s;
    return $s;
}

# Drives many client connections at once from this process. Each conn is a
# hash { reqs => [BYTES, ...] }: its requests go one after the other (the
# next once the previous response is whole). Afterwards {resps} holds the
# parsed responses, {error} what went wrong ('timeout', 'eof', ...), {t_done}
# when it finished. A conn without {sock} is opened with a non-blocking
# connect. keep_open => 1 leaves the sockets open for another round.
# tick => sub {} runs every tick_every seconds meanwhile. Returns the
# number of conns that got all their responses without error.
sub multiplex {
    my (%o) = @_;
    my $conns = $o{conns};
    my $poll = IO::Poll->new;
    my %conn_of;
    my $pending = 0;
    local $SIG{PIPE} = 'IGNORE';
    for my $c (@$conns) {
        @$c{qw(resps next wbuf busy done)} = ([], 0, '', 0, 0);
        $c->{rbuf} //= '';
        delete @$c{qw(error t_done)};
        if (!$c->{sock}) {
            $c->{sock} = nb_connect($o{port});
            $c->{connecting} = 1;
        }
        $conn_of{ fileno $c->{sock} } = $c;
        $poll->mask($c->{sock} => POLLIN | POLLOUT);
        $pending++;
    }
    my $finish = sub {
        my ($c, $err) = @_;
        $c->{error} = $err if $err;
        $c->{done} = 1;
        $c->{t_done} = time;
        $poll->remove($c->{sock});
        if ($err || !$o{keep_open}) {
            close $c->{sock};
            delete $c->{sock};
        }
        $pending--;
    };
    my $send_next = sub {
        my ($c) = @_;
        return if $c->{busy} || $c->{next} >= @{ $c->{reqs} };
        $c->{wbuf} .= $c->{reqs}[ $c->{next}++ ];
        $c->{busy} = 1;
    };
    my $deadline = time + ($o{timeout} || 60);
    my $every = $o{tick_every} || 0.25;
    my $next_tick = time + $every;
    while ($pending > 0) {
        if (time > $deadline) {
            $finish->($_, 'timeout') for grep { !$_->{done} } @$conns;
            last;
        }
        if ($o{tick} && time >= $next_tick) {
            $o{tick}->();
            $next_tick = time + $every;
        }
        $poll->poll(0.05);
        for my $fh ($poll->handles(POLLIN | POLLOUT | POLLERR | POLLHUP)) {
            my $c = $conn_of{ fileno $fh } or next;
            next if $c->{done};
            my $ev = $poll->events($fh);
            if ($c->{connecting}) {
                next unless $ev & (POLLOUT | POLLERR | POLLHUP);
                my $err = unpack('i', getsockopt($fh, SOL_SOCKET, SO_ERROR) // pack('i', 0));
                if ($err) { $! = $err; $finish->($c, "connect: $!"); next }
                $c->{connecting} = 0;
            }
            $send_next->($c);
            if (length $c->{wbuf}) {    # non-blocking: EAGAIN keeps the rest
                my $n = syswrite($fh, $c->{wbuf});
                if (defined $n) { substr($c->{wbuf}, 0, $n, '') }
                elsif (!$!{EAGAIN} && !$!{EWOULDBLOCK}) { $finish->($c, "write: $!"); next }
            }
            if ($ev & (POLLIN | POLLHUP | POLLERR)) {
                my $n = sysread($fh, $c->{rbuf}, 65536, length $c->{rbuf});
                my $eof = defined $n ? $n == 0 : !($!{EAGAIN} || $!{EWOULDBLOCK});
                while (my $r = take_response(\$c->{rbuf}, $eof)) {
                    push @{ $c->{resps} }, $r;
                    $c->{busy} = 0;
                    last if $eof || $r->{error};
                }
                if (!$c->{busy} && $c->{next} >= @{ $c->{reqs} }) {
                    $finish->($c, length $c->{rbuf} ? 'extra bytes' : undef);
                    next;
                }
                if ($eof) { $finish->($c, 'eof'); next }
                if (!$c->{busy}) {
                    $send_next->($c);
                    my $w = syswrite($fh, $c->{wbuf});
                    substr($c->{wbuf}, 0, $w, '') if defined $w;
                }
            }
            $poll->mask($fh => POLLIN | (length $c->{wbuf} ? POLLOUT : 0));
        }
    }
    return scalar grep { !$_->{error} && @{ $_->{resps} } == @{ $_->{reqs} } } @$conns;
}

# Runs $code in a forked process; what it prints to STDOUT comes back
# through a pipe, its return value (a string) as the last line "result ...".
sub spawn {
    my ($code) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        open STDOUT, '>&', $w or POSIX::_exit(1);
        $| = 1;
        my $res = eval { $code->() };
        $res = "died: $@" if $@;
        $res //= '';
        $res =~ s/\n/ /g;
        print "result $res\n";
        close STDOUT;
        POSIX::_exit(0);
    }
    close $w;
    return { pid => $pid, fh => $r, buf => '' };
}

sub pump {
    my ($job, $timeout) = @_;
    return 0 unless IO::Select->new($job->{fh})->can_read($timeout);
    my $n = sysread($job->{fh}, $job->{buf}, 65536, length $job->{buf});
    $job->{eof} = 1 if !$n;
    return 1;
}

# Waits for a line matching $re from the job; returns it (or undef).
sub wait_line {
    my ($job, $re, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        while ($job->{buf} =~ s/^([^\n]*)\n//) {
            my $l = $1;
            push @{ $job->{lines} }, $l;
            return $l if $l =~ $re;
        }
        return undef if $job->{eof};
        my $left = $deadline - time;
        return undef if $left <= 0;
        pump($job, $left);
    }
}

# Waits for the job to end; returns its result string (undef on timeout,
# then the process is killed).
sub finish {
    my ($job, $timeout) = @_;
    my $res = wait_line($job, qr/^result /, $timeout);
    if (!defined $res) {
        kill 'KILL', $job->{pid};
    }
    waitpid($job->{pid}, 0);
    close $job->{fh};
    return defined $res ? substr($res, 7) : undef;
}

1;
