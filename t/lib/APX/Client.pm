package APX::Client;

# The raw HTTP/1.1 client side of the integration tests, in one place:
# byte-exact requests on plain (IO::Socket::INET) and TLS (IO::Socket::SSL)
# sockets, ONE response parser that knows the framing rules of RFC 9112 (no
# body for HEAD / 1xx / 204 / 304, chunked with trailers, Content-Length,
# read-to-EOF; interim 1xx responses collected separately), used blocking
# (read_response) and non-blocking (multiplex: many connections driven from
# one process), the module's status figures, helpers to run a client in a
# forked process, and slowd's life.
#
#   use APX::Client qw(:all);
#   my $s = connect_to($port);                     # or connect_tls($port)
#   send_raw($s, get_req('/s/delay/0/10'));
#   my $buf = '';
#   my $r = read_response($s, \$buf, timeout => 5);  # {status, headers, body, complete, ...}
#   my $r = http_request($port, 'GET', '/x', headers => [...]);  # fresh connection
#   my $f = figures($port);            # { ParkedNow => N, ... } of /apx-status
#
#   my @c = map { { reqs => [get_req('/s/delay/1000/100')] } } 1 .. 2000;
#   multiplex(port => $port, conns => \@c, keep_open => 1,
#             tick => sub { ... }, tick_every => 0.2);
#   # each $c[i]{resps}[j] is a response as read_response returns it
#
#   my $job = spawn(sub { ...; print "ready\n"; ...; return "bytes=123" });
#   wait_line($job, qr/^ready/, 5);  my $res = finish($job, 30);
#
# Processes it forks leave with POSIX::_exit (no END blocks: no Test::More
# output, no APX::Httpd DESTROY stopping the server from the child).
# Nothing here kills anything by name: slowd is stopped by its pid.

use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use IO::Poll qw(POLLIN POLLOUT POLLERR POLLHUP);
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_ERROR SO_RCVBUF IPPROTO_TCP TCP_NODELAY
              pack_sockaddr_in inet_aton);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use POSIX ();
use Scalar::Util qw(weaken);
use Time::HiRes qw(sleep time);
use Digest::MD5 qw(md5_hex);
use Exporter 'import';

our @EXPORT_OK = qw(pattern_body noise md5_hex
                    connect_to connect_tls nb_connect send_raw
                    can_read read_until read_to_eof read_response
                    get_req request_bytes roundtrip request http_request
                    figures figure parse_figures
                    multiplex spawn wait_line finish wait_for raise_fd_limit
                    start_slowd stop_slowd
                    ref_mode ref_conf ref_httpd_opts);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# ---- bodies ---------------------------------------------------------------

my $PATTERN = join('', 0 .. 9, 'A' .. 'Z', 'a' .. 'z') . "-\n";

# slowd's body: byte i is PATTERN[i % 64]
sub pattern_body { my ($n) = @_; substr($PATTERN x (int($n / 64) + 1), 0, $n) }

# Deterministic bytes that gzip cannot shrink much (a seeded LCG).
sub noise {
    my ($n, $seed) = @_;
    my $x = $seed;
    my $s = '';
    while (length $s < $n) {
        $x = ($x * 1103515245 + 12345) % 2147483648;
        $s .= chr(($x >> 16) & 255);
    }
    return $s;
}

# ---- connections ----------------------------------------------------------

# A blocking TCP connection to 127.0.0.1:$port (TCP_NODELAY); dies when it
# fails. Options: timeout => S (connect, default 5).
sub connect_to {
    my ($port, %o) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                  Timeout => $o{timeout} // 5) or die "connect $port: $!";
    binmode $s;
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    return $s;
}

# A TLS connection to 127.0.0.1:$port (IO::Socket::SSL, no certificate
# check); dies when it fails. Options: timeout => S (connect and handshake,
# default 10).
sub connect_tls {
    my ($port, %o) = @_;
    require IO::Socket::SSL;
    return IO::Socket::SSL->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => $o{timeout} // 10,
                                SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE())
        // die "TLS connect: " . IO::Socket::SSL::errstr();
}

# A non-blocking socket with its connect under way (EINPROGRESS).
# Options: rcvbuf => BYTES (SO_RCVBUF, set before the connect).
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

# ---- bytes on a socket ----------------------------------------------------

# Writes all of $data (retrying after EINTR / EAGAIN); false when the peer
# is gone (EPIPE does not kill the process).
sub send_raw {
    my ($s, $data) = @_;
    my $off = 0;
    local $SIG{PIPE} = 'IGNORE';
    while ($off < length $data) {
        my $n = syswrite($s, $data, length($data) - $off, $off);
        if (!defined $n) {
            next if $!{EINTR} || $!{EAGAIN} || $!{EWOULDBLOCK};
            return 0;
        }
        $off += $n;
    }
    return 1;
}

# Readable within $timeout s? Knows IO::Socket::SSL's buffered bytes, which
# select() does not see.
sub can_read {
    my ($s, $timeout) = @_;
    return 1 if $s->can('pending') && $s->pending;
    return IO::Select->new($s)->can_read($timeout);
}

# Reads into $$buf until $cond->() is true, EOF or the timeout (default
# 10 s); returns true if the condition held. Sets $$eof (when given) on EOF
# (or a reset).
sub read_until {
    my ($s, $buf, $cond, $timeout, $eof) = @_;
    my $deadline = time + ($timeout // 10);
    while (!$cond->()) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        next unless can_read($s, $left);
        my $n = sysread($s, $$buf, 262144, length $$buf);
        next if !defined $n && ($!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR});
        if (!$n) {
            $$eof = 1 if $eof;
            return $cond->() ? 1 : 0;
        }
    }
    return 1;
}

# Reads until the peer closes (EOF or reset) or the timeout (default 10 s).
# Returns (bytes read, closed, seconds waited); the bytes in scalar context.
sub read_to_eof {
    my ($s, $timeout) = @_;
    my ($buf, $eof, $t0) = ('', 0, time);
    read_until($s, \$buf, sub { 0 }, $timeout, \$eof);
    return wantarray ? ($buf, $eof, time - $t0) : $buf;
}

# ---- the response parser --------------------------------------------------

# Parses the response at the front of $$buf. $need->($cond) returns true
# once $cond->() holds, reading more into $$buf when it can; false when no
# more bytes come (then $$eof is set if the peer closed). Options:
# head_only => 1 (the request was HEAD: no body whatever the head says),
# whole => 1 (return undef and leave $$buf alone unless the response is
# complete or known to be broken).
#
# Returns { status, reason, version, headers => {lc => 'v1, v2'},
# hlist => [[name, value], ...], head, body, chunked, chunks, trailers =>
# [[n, v]], interim => [ {status, hlist, ...}, ... ], raw, complete, eof },
# removed from $$buf (raw: the final response's bytes; interim heads are
# removed too), or undef when no whole head came. Without whole, an
# incomplete body (EOF or timeout first) gives complete => 0 and the bytes
# that did arrive in body; a chunk-size line that is not one gives
# complete => 0 and bad_chunk => LINE.
sub parse_response {
    my ($buf, $need, $eof, %o) = @_;
    my @interim;
    my $start = 0;      # where the response being parsed starts (after interim ones)
    my $head_end = sub {
        pos($$buf) = $start;
        return $$buf =~ /\r?\n\r?\n/g ? pos($$buf) : undef;
    };
    while (1) {
        $need->(sub { defined $head_end->() }) or return undef;
        my $hl = $head_end->();
        my $head = substr($$buf, $start, $hl - $start);
        my ($sl, @lines) = split /\r?\n/, $head;
        my ($ver, $status, $reason) = $sl =~ /^(HTTP\/\d\.\d) (\d{3})(?: (.*))?$/;
        $status //= 0;
        my (@hl, %h);
        for (@lines) {
            next unless /^([^:]+):[ \t]*(.*?)[ \t]*$/;
            push @hl, [$1, $2];
            my $k = lc $1;
            $h{$k} = exists $h{$k} ? "$h{$k}, $2" : $2;
        }
        my $r = { status => $status + 0, reason => $reason, version => $ver, headers => \%h,
                  hlist => \@hl, head => $head, chunks => 0, chunked => 0, trailers => [],
                  body => '', complete => 1 };
        if ($status >= 100 && $status < 200 && $status != 101) {
            push @interim, $r;
            $start = $hl;
            next;
        }
        $r->{interim} = \@interim;
        my $pos = $hl;
        my $line_at = sub { my ($p) = @_; $need->(sub { index($$buf, "\n", $p) >= 0 }) };
        my $te = $h{'transfer-encoding'} // '';
        if ($o{head_only} || $status == 204 || $status == 304 || ($status >= 100 && $status < 200)) {
        }
        elsif ($te =~ /chunked\s*$/i) {
            $r->{chunked} = 1;
            while (1) {
                if (!$line_at->($pos)) {
                    $r->{complete} = 0;
                    last;
                }
                my $e = index($$buf, "\n", $pos);
                my $line = substr($$buf, $pos, $e - $pos);
                $line =~ s/\r$//;
                if ($line !~ /^([0-9a-fA-F]+)/) {
                    $r->{complete} = 0;
                    $r->{bad_chunk} = $line;
                    last;
                }
                my $size = hex $1;
                $pos = $e + 1;
                if (!$size) {
                    # trailer section up to an empty line
                    my $ok = 1;
                    while (1) {
                        if (!$line_at->($pos)) {
                            $ok = 0;
                            last;
                        }
                        $e = index($$buf, "\n", $pos);
                        my $t = substr($$buf, $pos, $e - $pos);
                        $pos = $e + 1;
                        $t =~ s/\r$//;
                        last if $t eq '';
                        push @{ $r->{trailers} }, [$1, $2] if $t =~ /^([^:]+):[ \t]*(.*)$/;
                    }
                    $r->{complete} = 0 unless $ok;
                    $r->{last_chunk} = 1;
                    last;
                }
                if (!$need->(sub { length($$buf) >= $pos + $size + 2 })) {
                    $r->{body} .= substr($$buf, $pos) if length($$buf) > $pos;
                    $pos = length $$buf;
                    $r->{complete} = 0;
                    last;
                }
                $r->{body} .= substr($$buf, $pos, $size);
                $pos += $size + 2;
                $r->{chunks}++;
            }
        }
        elsif (defined $h{'content-length'}) {
            my $cl = $h{'content-length'};
            if (!$need->(sub { length($$buf) >= $pos + $cl })) {
                $r->{complete} = 0;
                $cl = length($$buf) - $pos;
            }
            $r->{body} = substr($$buf, $pos, $cl);
            $pos += $cl;
        }
        else {
            # no framing: the body runs to EOF
            $need->(sub { 0 });
            $r->{body} = substr($$buf, $pos);
            $pos = length $$buf;
            $r->{complete} = $$eof ? 1 : 0;
        }
        return undef if $o{whole} && !$r->{complete} && !defined $r->{bad_chunk};
        substr($$buf, 0, $start, '');
        $r->{raw} = substr($$buf, 0, $pos - $start, '');
        $r->{eof} = $$eof;
        return $r;
    }
}

# Blocking read of one response on a plain or TLS socket; see
# parse_response for what it returns. Options: timeout => S (the longest
# wait for each part: the head, a chunk, the body; default 10), head_only.
sub read_response {
    my ($s, $buf, %o) = @_;
    my $timeout = delete $o{timeout} // 10;
    my $eof = 0;
    return parse_response($buf, sub { read_until($s, $buf, $_[0], $timeout, \$eof) }, \$eof, %o);
}

# ---- requests -------------------------------------------------------------

# The bytes of a request: the request line, "Host: 127.0.0.1:$port" and
# "Connection: close" unless the headers have them (or keep_alive => 1), the
# headers => [name, value, ...] in their order, Content-Length for a body
# unless it has framing headers, the body.
sub request_bytes {
    my ($port, $method, $path, %o) = @_;
    my $hdrs = $o{headers} // [];
    my $req = "$method $path HTTP/1.1\r\n";
    my %have = map { lc($hdrs->[2 * $_]) => 1 } 0 .. @$hdrs / 2 - 1;
    $req .= "Host: 127.0.0.1:$port\r\n" unless $have{host};
    $req .= "Connection: close\r\n" unless $have{connection} || $o{keep_alive};
    for (my $i = 0; $i < @$hdrs; $i += 2) {
        $req .= "$hdrs->[$i]: $hdrs->[$i + 1]\r\n";
    }
    $req .= 'Content-Length: ' . length($o{body}) . "\r\n" if defined $o{body} && !$have{'content-length'}
                                                             && !$have{'transfer-encoding'};
    $req .= "\r\n";
    $req .= $o{body} if defined $o{body};
    return $req;
}

# A GET with "Host: 127.0.0.1" (no port) and the given headers sorted by
# name; no Connection header unless given.
sub get_req {
    my ($path, %h) = @_;
    return request_bytes(undef, 'GET', $path, keep_alive => 1,
                         headers => [Host => '127.0.0.1', map { ($_ => $h{$_}) } sort keys %h]);
}

# Sends $bytes on an open connection and reads the response (read_response's
# options; head_only defaults to whether $bytes starts with a HEAD).
sub roundtrip {
    my ($s, $buf, $bytes, %o) = @_;
    send_raw($s, $bytes);
    return read_response($s, $buf, head_only => scalar($bytes =~ /^HEAD /), %o);
}

# $bytes as one request on a fresh connection (tls => 1: over TLS);
# returns the parsed response, or undef when none came (or no connection).
sub request {
    my ($port, $bytes, %o) = @_;
    my $tls = delete $o{tls};
    my $s = eval { $tls ? connect_tls($port) : connect_to($port) } or return undef;
    my $buf = '';
    my $r = roundtrip($s, \$buf, $bytes, %o);
    close $s;
    return $r;
}

# One request on a fresh connection (request_bytes' options; Connection:
# close unless the headers have one); returns the parsed response (or
# undef). Options also: timeout => S (default 15), tls => 1.
sub http_request {
    my ($port, $method, $path, %o) = @_;
    return request($port, request_bytes($port, $method, $path, %o),
                   timeout => $o{timeout} // 15, tls => $o{tls});
}

# ---- the module's figures -------------------------------------------------

# { Name => value } of the "AsyncProxyName: value" lines of a status page.
sub parse_figures { my ($text) = @_; return { ($text // '') =~ /^AsyncProxy(\w+): (\S+)$/mg } }

# The module's figures from /apx-status of the child that answers, the
# "AsyncProxy" prefix stripped: { ParkedNow => N, ... }; {} when it fails.
# Options: tls => 1.
sub figures {
    my ($port, %o) = @_;
    my $r = http_request($port, 'GET', '/apx-status', tls => $o{tls});
    return {} unless $r && $r->{status} == 200;
    return parse_figures($r->{body});
}

sub figure { my ($port, $name) = @_; return figures($port)->{$name} }

# Polls $cond every 50 ms for up to $timeout s (default 5); returns its last
# value.
sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    my $v;
    until (($v = $cond->()) || time >= $deadline) {
        sleep 0.05;
    }
    return $v;
}

# ---- many connections at once ---------------------------------------------

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

# Drives many client connections at once from this process. Each conn is a
# hash { reqs => [BYTES, ...] }: its requests go one after the other (the
# next once the previous response is whole). Afterwards {resps} holds the
# parsed responses, {error} what went wrong ('timeout', 'eof', 'bad chunk',
# ...), {t_done} when it finished. A conn without {sock} is opened with a
# non-blocking connect. keep_open => 1 leaves the sockets open for another
# round. tick => sub {} runs every tick_every seconds meanwhile. Returns the
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
                my $bad;
                # whole responses only, parsed from what is there
                while (my $r = parse_response(\$c->{rbuf}, sub { $_[0]->() }, \$eof, whole => 1)) {
                    push @{ $c->{resps} }, $r;
                    $c->{busy} = 0;
                    $bad = 1 if defined $r->{bad_chunk};
                    last if $eof || $bad;
                }
                if ($bad) { $finish->($c, 'bad chunk'); next }
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

# ---- a client in a forked process -----------------------------------------

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

# Waits for a line matching $re from the job (or any { fh, buf } reading a
# process's output); returns it (or undef).
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

# ---- slowd ----------------------------------------------------------------

my @slowds;     # weak references: the ones still running are stopped at END

# slowd (bench/slowd.c) on a kernel-chosen port: { pid, port, fh }.
sub start_slowd {
    require APX::Httpd;
    my $bin = $ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd';
    die "$bin is not built (make -C bench slowd)\n" unless -x $bin;
    my $pid = open(my $out, '-|', $bin, '-p', '0', '-q') or die "slowd: $!";
    my $line = <$out> // '';
    my ($port) = $line =~ /^slowd listening on 127\.0\.0\.1:(\d+)$/
        or die "slowd did not start: $line";
    my $sd = bless { pid => $pid, port => $port, fh => $out, owner => $$ }, 'APX::Client::Slowd';
    push @slowds, $sd;
    weaken($slowds[-1]);
    return $sd;
}

sub stop_slowd {
    my ($sd) = @_;
    return unless $sd && $sd->{pid} && $sd->{owner} == $$;
    kill 'TERM', $sd->{pid};
    close $sd->{fh};    # waits for it
    delete $sd->{pid};
}

END { local $?; stop_slowd($_) for grep { defined } @slowds }

# a test that dies still stops its slowd (closing the pipe alone would wait
# for slowd forever)
sub APX::Client::Slowd::DESTROY {
    my ($sd) = @_;
    local ($?, $!, $@);
    stop_slowd($sd);
}

# ---- reference mode -------------------------------------------------------
# APX_REF=mod_proxy runs a test's expectations against httpd's own
# mod_proxy_http instead of this module: the directives are translated
# (AsyncProxyPass -> ProxyPass, ...; module-only ones dropped). It checks the
# tests themselves (a failure there is the test's or mod_proxy's, not ours);
# the module must still load, so point APX_MODULE_SO at a build of it.
sub ref_mode { ($ENV{APX_REF} // '') eq 'mod_proxy' }

sub ref_conf {
    my ($conf) = @_;
    return $conf unless ref_mode();
    my @out;
    for my $l (split /\n/, $conf) {
        if ($l =~ /^(\s*)AsyncProxyPass\s+(.*)$/) {
            my ($ind, $args) = ($1, $2);
            my @a = map { s/^connecttimeout=/connectiontimeout=/ir } grep { !/^parkdelay=/i } split ' ', $args;
            push @out, "${ind}ProxyPass @a";
        }
        elsif ($l =~ s/^(\s*)AsyncProxy(PassReverse|PreserveHost|AddHeaders|Timeout)\b/$1Proxy$2/) {
            push @out, $l;
        }
        elsif ($l =~ /^\s*AsyncProxy/) {
            next;
        }
        else {
            push @out, $l;
        }
    }
    return join("\n", @out) . "\n";
}

# Extra APX::Httpd->new options for reference mode.
sub ref_httpd_opts {
    return () unless ref_mode();
    return (modules => ['proxy', 'proxy_http']);
}

1;
