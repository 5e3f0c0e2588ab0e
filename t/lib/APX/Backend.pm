package APX::Backend;

=encoding utf8

=head1 NAME

APX::Backend - a scripted HTTP/1.1 backend on 127.0.0.1 for integration tests

=head1 SYNOPSIS

    use lib 't/lib';
    use APX::Backend;

    # every request gets the same answer (a raw string is sent verbatim)
    my $b = APX::Backend->new(response => APX::Backend::response(200, "hello\n"));

    # or a callback, called once per request, in the connection's process
    my $b = APX::Backend->new(handler => sub {
        my ($req, $conn) = @_;
        return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"     if $req->{target} eq '/a';
        return [[send => "HTTP/1.1 200 OK\r\n"], [sleep => 0.5],
                [send => "Content-Length: 0\r\n\r\n"], [close => 1]];
    });

    my $port = $b->port;                  # the kernel-chosen port
    ...                                   # drive the proxy / raw clients
    my @r = $b->requests;                 # what arrived, in arrival order
    is($r[0]{method}, 'POST');
    is($r[0]{hdr}{'content-type'}, 'text/plain');
    is($r[1]{conn_id}, $r[0]{conn_id}, 'backend connection reused');
    $b->stop;                             # TERM, then KILL; waits; idempotent

=head1 DESCRIPTION

C<new> binds a listening socket on 127.0.0.1 port 0 in the calling process
(so the port is known before C<new> returns and nothing races for it), then
forks a listener process that forks one process per accepted connection.
Requests on one connection are handled in order, one at a time; connections
run concurrently, so a C<[sleep]> on one connection never delays another.

Every process it forks is in the listener's own process group and exits by
itself when the test process goes away (a pipe from the test closes, or
getppid() changes), so a test that dies leaves nothing behind. Forked
processes leave with POSIX::_exit: no END block, no Test::More output.
Handlers run in those processes: do not call Test::More functions there —
record what you need in the request log instead (it is read back by the test).

=head2 new(%options)

=over

=item handler => sub { my ($req, $conn) = @_; ... }

Called after a request's head and body were read. C<$req> is the hash
described under L</requests>; C<$conn> is C<< { id, index, sock, peer_port } >>
(C<index> counts requests on this connection from 0; C<sock> is the raw
socket for anything exotic). Returns one of:

=over

=item * a string: sent verbatim (malformed heads, bad chunk sizes, CL+TE,
extra bytes after a response — anything). Afterwards the connection stays
open if the request allows keep-alive and the string's head does not say
C<Connection: close>.

=item * an array ref of steps, performed in order:
C<[send =E<gt> BYTES]>, C<[sleep =E<gt> SECONDS]>,
C<[close =E<gt> 1]> (close the socket now; ends the connection),
C<[shutdown_wr =E<gt> 1]> (send FIN; the process then only reads until the
peer closes, answering nothing more), C<[keep =E<gt> 1]> (keep the
connection for the next request whatever the request or the response said).
Without C<close>/C<keep> the rule for strings above applies to the bytes sent.

=item * undef: the default answer, C<200 OK> with body C<"ok\n">.

=back

A handler that dies closes the connection; the error is in the log
(C<< $req->{handler_error} >>).

=item response => STRING | [STEPS]

The same answer for every request (instead of C<handler>).

=item responses => [ STRING | [STEPS], ... ]

The Nth request received by the backend (over all connections, counted by
C<seq>) gets the Nth answer; the last one repeats.

=item on_accept => sub { my ($conn) = @_; return STRING | [STEPS] | undef }

Run when a connection is accepted, before reading anything (a greeting, an
immediate close: C<< on_accept => sub { [[close => 1]] } >>).

=item on_expect => sub { my ($req, $conn) = @_; return STRING | [STEPS] | undef }

For a request with C<Expect: 100-continue> and a body, run after the head,
before reading the body (C<< $req->{body} >> is still empty). The default
sends C<"HTTP/1.1 100 Continue\r\n\r\n">. Return C<''> to send nothing (the
client sends its body after its own wait), or a final response plus
C<[close =E<gt> 1]> to refuse the body.

=item port => PORT

Listen on this port instead of a kernel-chosen one (a backend restarted on
the port of one that was stopped).

=item idle_timeout => SECONDS

A connection with no request arriving for that long is closed (default 30).

=back

=head2 Methods

=over

=item port, pid

The listening port; the listener's pid (also its process group id; still
returned after stop, so a test can check that it is gone).

=item requests

All requests logged so far, in arrival order. Each is a hash:
C<method>, C<target>, C<version> (C<'HTTP/1.1'>), C<headers> (array of
C<[name, value]> in the order received, names as sent), C<hdr> (lower-cased
name => value, repeated headers joined with C<', '>), C<body> (the body,
de-chunked if it was chunked), C<chunked> (1 if it was), C<trailers> (array
of C<[name, value]>), C<raw> (the exact bytes of this request as received:
head, framing and body), C<conn_id> (which TCP connection: 0, 1, ... in
accept order), C<index> (its position on that connection), C<seq> (its
position over the whole backend), C<time> (Time::HiRes time when it was
complete), C<expect> (1 if it carried Expect: 100-continue). A request that
could not be parsed has C<error> set and closes its connection. A request
whose connection C<on_expect> closed is logged with its head only.

=item connections

One hash per accepted connection, in accept order: C<conn_id>,
C<peer_port>, C<time>, and once it ended C<closed_by> (C<'peer'> if the
client closed or reset first, C<'server'> if a step or the response closed
it, C<'timeout'>) and C<closed_at>.

=item wait_requests($n, $timeout = 5)

Waits until at least C<$n> requests are logged; returns them (or what there
is when the time runs out).

=item stop

Sends TERM to the listener, which passes it to its connection processes and
exits once they all have (KILLing them after 1.5 s); stop waits up to 3 s
for that, then KILLs the listener and its process group; reaps the
listener. When stop returns, no process of this backend is left.
Called by DESTROY in the process that created the backend.

=item APX::Backend::response($status, $body, @headers)

Builds a well-formed response string with Content-Length:
C<response(404, "no\n", 'X-A' =E<gt> 1)>.

=back

=cut

use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_REUSEADDR);
use POSIX ();
use Fcntl qw(:flock O_WRONLY O_APPEND O_CREAT);
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);
use APX::Client qw(send_raw);

# Write ends of the pipes of every live backend of this process: a newly
# forked listener closes them all, so each pipe's only writer is the test.
my %live_pipes;

my %REASON = (100 => 'Continue', 200 => 'OK', 201 => 'Created', 204 => 'No Content',
              301 => 'Moved Permanently', 304 => 'Not Modified', 400 => 'Bad Request',
              404 => 'Not Found', 413 => 'Payload Too Large', 500 => 'Internal Server Error',
              502 => 'Bad Gateway', 503 => 'Service Unavailable', 504 => 'Gateway Timeout');

# A response for $req as response() makes it, without its body when the
# request was a HEAD (the caches' scripted origins answer both).
sub reply {
    my ($req, $status, $body, @h) = @_;
    my $s = response($status, $body, @h);
    $s =~ s/\r\n\r\n.*\z/\r\n\r\n/s if $req->{method} eq 'HEAD';
    return $s;
}

sub response {
    my ($status, $body, @h) = @_;
    $body //= '';
    my $s = "HTTP/1.1 $status " . ($REASON{$status} // 'Status') . "\r\n";
    while (my ($n, $v) = splice(@h, 0, 2)) {
        $s .= "$n: $v\r\n";
    }
    return $s . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
}

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        handler      => $o{handler},
        response     => $o{response},
        responses    => $o{responses},
        on_accept    => $o{on_accept},
        on_expect    => $o{on_expect},
        idle_timeout => $o{idle_timeout} // 30,
        owner        => $$,
    }, $class;
    $self->{dir} = tempdir('apx-backend-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{APX_KEEP});
    $self->{log} = "$self->{dir}/log";
    open(my $fh, '>', $self->{log}) or die "APX::Backend: $self->{log}: $!";
    close $fh;
    my $ls = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $o{port} // 0, Proto => 'tcp',
                                   Listen => 128, ReuseAddr => 1)
        or die "APX::Backend: listen: $!";
    $self->{port} = $ls->sockport;
    pipe(my $rd, my $wr) or die "APX::Backend: pipe: $!";
    my $test_pid = $$;
    my $pid = fork;
    die "APX::Backend: fork: $!" unless defined $pid;
    if (!$pid) {
        close $wr;
        close $_ for values %live_pipes;
        %live_pipes = ();
        my $rc = eval { $self->_listener($ls, $rd, $test_pid); 0 } // do {
            print STDERR "APX::Backend listener: $@";
            1;
        };
        POSIX::_exit($rc);
    }
    close $rd;
    close $ls;
    $self->{pid} = $pid;
    $self->{pipe} = $wr;
    $live_pipes{"$wr"} = $wr;
    return $self;
}

sub port { $_[0]{port} }
sub pid  { $_[0]{pid} // $_[0]{stopped_pid} }
sub dir  { $_[0]{dir} }

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    return if $$ != $self->{owner};
    kill 'TERM', $pid;
    my $deadline = time + 3;
    my $gone = 0;
    while (time < $deadline) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        if ($r == $pid || $r == -1) { $gone = 1; last }
        sleep 0.01;
    }
    if (!$gone) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    # connection processes that outlived the listener (its group id is its pid)
    kill 'KILL', -$pid;
    if (my $wr = delete $self->{pipe}) {
        delete $live_pipes{"$wr"};
        close $wr;
    }
    delete $self->{pid};
    $self->{stopped_pid} = $pid;
    return 1;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop if $self->{pid};
}

# ---- log: length-prefixed records, each one write(2) under an flock ----

sub _log_write {
    my ($self, %rec) = @_;
    my @kv;
    for my $k (sort keys %rec) {
        my $v = $rec{$k};
        if (ref $v eq 'ARRAY') {
            $v = pack('(N/a*)*', map { @$_ } @$v);
            $k = "\@$k";
        }
        push @kv, $k, $v // '';
    }
    my $payload = pack('(N/a*)*', @kv);
    my $data = pack('N', length $payload) . $payload;
    sysopen(my $fh, $self->{log}, O_WRONLY | O_APPEND | O_CREAT) or return;
    flock($fh, LOCK_EX);
    syswrite($fh, $data);
    close $fh;
}

sub _log_read {
    my ($self) = @_;
    open(my $fh, '<', $self->{log}) or return ();
    flock($fh, LOCK_SH);
    local $/;
    my $all = <$fh> // '';
    close $fh;
    my @recs;
    my $pos = 0;
    while ($pos + 4 <= length $all) {
        my $len = unpack('N', substr($all, $pos, 4));
        last if $pos + 4 + $len > length $all;
        my %r = unpack('(N/a*)*', substr($all, $pos + 4, $len));
        $pos += 4 + $len;
        for my $k (grep { /^\@/ } keys %r) {
            my @flat = unpack('(N/a*)*', delete $r{$k});
            my @pairs;
            push @pairs, [splice(@flat, 0, 2)] while @flat;
            $r{substr($k, 1)} = \@pairs;
        }
        push @recs, \%r;
    }
    return @recs;
}

sub requests {
    my ($self) = @_;
    my (@reqs, %herr);
    my @recs = $self->_log_read;
    $herr{ $_->{seq} } = $_->{error} for grep { $_->{type} eq 'handler_error' } @recs;
    for my $r (grep { $_->{type} eq 'request' } @recs) {
        delete $r->{type};
        $r->{handler_error} = $herr{ $r->{seq} } if exists $herr{ $r->{seq} };
        $r->{$_} += 0 for qw(seq conn_id index chunked expect);
        my %hdr;
        for my $h (@{ $r->{headers} || [] }) {
            my $k = lc $h->[0];
            $hdr{$k} = exists $hdr{$k} ? "$hdr{$k}, $h->[1]" : $h->[1];
        }
        $r->{hdr} = \%hdr;
        delete $r->{error} if defined $r->{error} && $r->{error} eq '';
        push @reqs, $r;
    }
    return sort { $a->{seq} <=> $b->{seq} } @reqs;
}

sub connections {
    my ($self) = @_;
    my (%c, @order);
    for my $r ($self->_log_read) {
        if ($r->{type} eq 'accept') {
            $c{ $r->{conn_id} } = { conn_id => $r->{conn_id} + 0, peer_port => $r->{peer_port} + 0,
                                    time => $r->{time} };
            push @order, $r->{conn_id};
        }
        elsif ($r->{type} eq 'close' && $c{ $r->{conn_id} }) {
            $c{ $r->{conn_id} }{closed_by} = $r->{by};
            $c{ $r->{conn_id} }{closed_at} = $r->{time};
        }
    }
    return map { $c{$_} } sort { $a <=> $b } @order;
}

sub wait_requests {
    my ($self, $n, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    my @r;
    while (1) {
        @r = $self->requests;
        last if @r >= $n || time >= $deadline;
        sleep 0.02;
    }
    return @r;
}

# ---- listener process ----

sub _listener {
    my ($self, $ls, $rd, $test_pid) = @_;
    POSIX::setpgid(0, 0);
    # Connection processes are reaped by the kernel; with SIGCHLD ignored,
    # waitpid(-1) reports ECHILD only once all of them have exited.
    $SIG{CHLD} = 'IGNORE';
    $SIG{PIPE} = 'IGNORE';
    my %kids;
    my $quit = sub {
        $SIG{TERM} = 'IGNORE';
        kill 'TERM', keys %kids;
        my $deadline = time + 1.5;
        while (waitpid(-1, POSIX::WNOHANG()) != -1) {
            if (time > $deadline) {
                kill 'KILL', keys %kids;
                $deadline = time + 60;
            }
            sleep 0.005;
        }
        POSIX::_exit(0);
    };
    $SIG{TERM} = $quit;
    $self->{parent_pipe} = $rd;
    $self->{watch_pid} = $test_pid;
    my $sel = IO::Select->new($ls, $rd);
    my $conn_id = 0;
    while (1) {
        for my $fh ($sel->can_read(0.2)) {
            $quit->() if $fh == $rd;    # readable = EOF: the test is gone
            my $s = $ls->accept or next;
            my $id = $conn_id++;
            my $pid = fork;
            if (!defined $pid) {
                close $s;
                next;
            }
            if (!$pid) {
                $SIG{TERM} = 'DEFAULT';
                close $ls;
                $self->{watch_pid} = getppid();
                my $rc = eval { $self->_connection($s, $id); 0 } // do {
                    print STDERR "APX::Backend connection $id: $@";
                    1;
                };
                POSIX::_exit($rc);
            }
            $kids{$pid} = 1;
            close $s;
        }
        $quit->() if getppid() != $test_pid;
        delete @kids{ grep { !kill(0, $_) } keys %kids };
    }
}

# ---- connection process ----

# Is the test (or, for a connection process, the listener) still there?
sub _alive {
    my ($self) = @_;
    return 0 if getppid() != $self->{watch_pid};
    my $rd = $self->{parent_pipe};
    my $sel = IO::Select->new($rd);
    return 0 if $sel->can_read(0);      # readable = EOF: the writer died
    return 1;
}

# Reads more bytes into $$buf; returns the number read, 0 on EOF/error,
# undef on idle timeout.
sub _fill {
    my ($self, $c, $buf) = @_;
    my $deadline = time + $self->{idle_timeout};
    my $sel = IO::Select->new($c->{sock});
    while (1) {
        exit_if_orphan($self);
        if ($sel->can_read(0.2)) {
            my $n = sysread($c->{sock}, $$buf, 65536, length $$buf);
            return $n // 0;
        }
        return undef if time >= $deadline;
    }
}

sub exit_if_orphan {
    my ($self) = @_;
    POSIX::_exit(0) unless $self->_alive;
}

sub _end {
    my ($self, $c, $by) = @_;
    if (my $p = delete $self->{pending_req}) {
        # the connection ends before the body was read (on_expect refused
        # it): the head still goes into the log
        $p->{seq} = $self->_next_seq;
        $self->_log_write(type => 'request', map { $_ => $p->{$_} } grep { $_ ne 'hdr' } keys %$p);
    }
    $self->_log_write(type => 'close', conn_id => $c->{id}, by => $by, time => time);
    close $c->{sock};
    POSIX::_exit(0);
}

# Performs a handler's answer. Returns 'keep', 'close' (already closed),
# 'shut' (FIN sent) or 'default' (caller applies the keep-alive rule).
sub _perform {
    my ($self, $c, $answer, $sent) = @_;
    my @steps = ref $answer eq 'ARRAY' ? @$answer : ([send => $answer]);
    my $result = 'default';
    for my $st (@steps) {
        my ($op, $arg) = @$st;
        if ($op eq 'send') {
            $$sent .= $arg;
            $self->_end($c, 'peer') unless send_raw($c->{sock}, $arg);
        }
        elsif ($op eq 'sleep') {
            my $until = time + $arg;
            while ((my $left = $until - time) > 0) {
                $self->exit_if_orphan;
                sleep($left < 0.1 ? $left : 0.1);
            }
        }
        elsif ($op eq 'close') {
            $self->_end($c, 'server');
        }
        elsif ($op eq 'shutdown_wr') {
            shutdown($c->{sock}, 1);
            $result = 'shut';
        }
        elsif ($op eq 'keep') {
            $result = 'keep' unless $result eq 'shut';
        }
        else {
            die "APX::Backend: unknown step '$op'\n";
        }
    }
    return $result;
}

sub _answer_for {
    my ($self, $req, $c) = @_;
    return $self->{handler}->($req, $c) if $self->{handler};
    return $self->{response} if defined $self->{response};
    if (my $list = $self->{responses}) {
        return $list->[$req->{seq} < @$list ? $req->{seq} : $#$list];
    }
    return undef;
}

sub _next_seq {
    my ($self) = @_;
    my $f = "$self->{dir}/seq";
    sysopen(my $fh, $f, Fcntl::O_RDWR() | O_CREAT) or die "seq: $!";
    flock($fh, LOCK_EX);
    my $n = <$fh> // 0;
    seek($fh, 0, 0);
    truncate($fh, 0);
    syswrite($fh, ($n + 1) . "\n");
    close $fh;
    return $n + 0;
}

sub _connection {
    my ($self, $sock, $id) = @_;
    $SIG{PIPE} = 'IGNORE';
    binmode $sock;
    my $c = { id => $id, index => 0, sock => $sock, peer_port => $sock->peerport };
    $self->_log_write(type => 'accept', conn_id => $id, peer_port => $c->{peer_port}, time => time);
    if ($self->{on_accept}) {
        my $a = $self->{on_accept}->($c);
        if (defined $a) {
            my $sent = '';
            my $r = $self->_perform($c, $a, \$sent);
            $self->_drain_until_eof($c) if $r eq 'shut';
        }
    }
    my $buf = '';
    while (1) {
        my $req = $self->_read_request($c, \$buf);
        $req->{seq} = $self->_next_seq;
        # logged before the handler runs, so a test sees a request whose
        # answer is still being slept on
        $self->_log_write(type => 'request', map { $_ => $req->{$_} } grep { $_ ne 'hdr' } keys %$req);
        $self->_end($c, 'server') if $req->{error};
        my $answer;
        if (!eval { $answer = $self->_answer_for($req, $c); 1 }) {
            $self->_log_write(type => 'handler_error', seq => $req->{seq}, error => "$@");
            print STDERR "APX::Backend handler died: $@";
            $self->_end($c, 'server');
        }
        $answer //= response(200, $req->{method} eq 'HEAD' ? '' : "ok\n");
        my $sent = '';
        my $r = $self->_perform($c, $answer, \$sent);
        $self->_drain_until_eof($c) if $r eq 'shut';
        $self->_end($c, 'server') if $r ne 'keep' && !_keepalive($req, $sent);
        $c->{index}++;
    }
}

sub _drain_until_eof {
    my ($self, $c) = @_;
    my $junk = '';
    while (1) {
        my $n = $self->_fill($c, \$junk);
        $self->_end($c, defined $n ? 'peer' : 'timeout') unless $n;
        $junk = '';
    }
}

# Keep-alive rule after a response: the request must allow it and the head
# we sent (if any) must not say Connection: close.
sub _keepalive {
    my ($req, $sent) = @_;
    my $conn = lc join ',', map { $_->[1] } grep { lc $_->[0] eq 'connection' } @{ $req->{headers} };
    my $ok = $req->{version} eq 'HTTP/1.0' ? $conn =~ /\bkeep-alive\b/ : $conn !~ /\bclose\b/;
    return 0 unless $ok;
    # the last response head in what we sent (a 100 Continue may precede it)
    my $at = rindex($sent, 'HTTP/1.');
    return 1 if $at < 0;
    my ($head) = substr($sent, $at) =~ /^(.*?)(?:\r?\n\r?\n|\z)/s;
    return $head =~ /^Connection:[ \t]*[^\r\n]*\bclose\b/mi ? 0 : 1;
}

# Reads one complete request from the connection; exits the process when the
# peer closes or idles out between requests.
sub _read_request {
    my ($self, $c, $buf) = @_;
    my $scan = 0;
    my $hlen;
    my $lead = 0;
    while (1) {
        # empty lines before a request line are tolerated (RFC 9112 2.2)
        # and kept in raw
        $lead = $$buf =~ /^((?:\r?\n)*)/ ? length $1 : 0;
        pos($$buf) = $lead;
        if ($lead < length $$buf && $$buf =~ /\G.*?\r?\n\r?\n/gs) {
            $hlen = pos($$buf);
            last;
        }
        my $n = $self->_fill($c, $buf);
        if (!$n) {
            if (length $$buf) {
                return { error => 'incomplete head', raw => $$buf, method => '', target => '',
                         version => '', headers => [], body => '', conn_id => $c->{id},
                         index => $c->{index}, time => time };
            }
            $self->_end($c, defined $n ? 'peer' : 'timeout');
        }
    }
    my $head = substr($$buf, $lead, $hlen - $lead);
    my %req = (conn_id => $c->{id}, index => $c->{index}, headers => [], trailers => [],
               body => '', chunked => 0, expect => 0, method => '', target => '', version => '');
    my @lines = split /\r?\n/, $head;
    my $rl = shift @lines // '';
    if ($rl =~ /^(\S+) (\S+) (HTTP\/\d\.\d)$/) {
        @req{qw(method target version)} = ($1, $2, $3);
    }
    else {
        $req{error} = "bad request line";
    }
    for my $l (@lines) {
        if ($l =~ /^([^:\s]+):[ \t]*(.*?)[ \t]*$/) {
            push @{ $req{headers} }, [$1, $2];
        }
        else {
            $req{error} //= "bad header line";
        }
    }
    my %h;
    $h{ lc $_->[0] } = exists $h{ lc $_->[0] } ? "$h{lc $_->[0]}, $_->[1]" : $_->[1]
        for @{ $req{headers} };
    $req{hdr} = \%h;
    my $te = $h{'transfer-encoding'};
    my $cl = $h{'content-length'};
    my $has_body = (defined $te && $te =~ /chunked\s*$/i) || (defined $cl && $cl =~ /^\d+$/ && $cl > 0);
    if (defined $cl && $cl !~ /^\d+$/ && !defined $te) {
        $req{error} //= "bad Content-Length '$cl'";
    }
    if ($req{error}) {
        $req{raw} = substr($$buf, 0, $hlen, '');
        $req{time} = time;
        return \%req;
    }

    if ($has_body && ($h{expect} // '') =~ /^100-continue$/i) {
        $req{expect} = 1;
        my $a = $self->{on_expect} ? $self->{on_expect}->({%req}, $c)
                                   : "HTTP/1.1 100 Continue\r\n\r\n";
        if (defined $a && $a ne '') {
            my $sent = '';
            local $self->{pending_req} = { %req, raw => substr($$buf, 0, $hlen), time => time };
            my $r = $self->_perform($c, $a, \$sent);
            $self->_drain_until_eof($c) if $r eq 'shut';
        }
    }

    my $pos = $hlen;
    if (defined $te && $te =~ /chunked\s*$/i) {
        # incremental de-chunking: $pos walks the buffer, refilled as needed
        $req{chunked} = 1;
        my $need = sub {        # ensures $$buf has a full line (or $n bytes) at $pos
            my ($n) = @_;
            while (1) {
                if (defined $n) {
                    return 1 if length($$buf) >= $pos + $n;
                }
                else {
                    return 1 if index($$buf, "\n", $pos) >= 0;
                }
                return 0 unless $self->_fill($c, $buf);
            }
        };
        my $fail = sub {
            $req{error} = $_[0];
            $req{raw} = substr($$buf, 0, length $$buf, '');
            $req{time} = time;
            return \%req;
        };
        while (1) {
            return $fail->('truncated chunk size') unless $need->(undef);
            my $e = index($$buf, "\n", $pos);
            my $line = substr($$buf, $pos, $e - $pos);
            $pos = $e + 1;
            $line =~ s/\r$//;
            return $fail->("bad chunk size '$line'") unless $line =~ /^([0-9a-fA-F]+)[ \t]*(?:;.*)?$/;
            my $size = hex $1;
            if ($size == 0) {
                while (1) {     # trailer section up to the empty line
                    return $fail->('truncated trailers') unless $need->(undef);
                    $e = index($$buf, "\n", $pos);
                    my $t = substr($$buf, $pos, $e - $pos);
                    $pos = $e + 1;
                    $t =~ s/\r$//;
                    last if $t eq '';
                    push @{ $req{trailers} }, [$1, $2] if $t =~ /^([^:\s]+):[ \t]*(.*?)[ \t]*$/;
                }
                last;
            }
            return $fail->('truncated chunk data') unless $need->($size);
            $req{body} .= substr($$buf, $pos, $size);
            $pos += $size;
            return $fail->('truncated chunk end') unless $need->(undef);
            $e = index($$buf, "\n", $pos);
            my $crlf = substr($$buf, $pos, $e + 1 - $pos);
            return $fail->('missing CRLF after chunk data') unless $crlf =~ /^\r?\n$/;
            $pos = $e + 1;
        }
    }
    elsif (defined $cl && $cl > 0) {
        while (length($$buf) < $pos + $cl) {
            if (!$self->_fill($c, $buf)) {
                $req{error} = 'truncated body';
                $req{body} = substr($$buf, $pos);
                $pos = length $$buf;
                last;
            }
        }
        $req{body} = substr($$buf, $pos, $cl) unless $req{error};
        $pos += $cl unless $req{error};
    }
    $req{raw} = substr($$buf, 0, $pos, '');
    $req{time} = time;
    return \%req;
}

1;
