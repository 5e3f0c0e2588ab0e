#!/usr/bin/perl
# Upgrade tunnels (issue 14 B): a mapping with upgrade=websocket forwards
# the client's Upgrade; the backend's 101 turns the connection into a
# two-way tunnel run by the poller (no thread held while quiet or while a
# side does not read), with half-close, an idle timeout (tunneltimeout=),
# the access-log line written when the tunnel closes, and TLS (wss://).
#
# The backend is a real WebSocket echo server (t/lib/APX/WS.pm framer, one
# forked process per connection): it logs what it saw (messages, pings,
# close frames, EOF, how much it could send to a client that does not read)
# and the assertions are on that log. The echo checks run under the event
# MPM (parked), the worker MPM (polled in place) and over TLS.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use APX::WS qw(:all);
use IO::Select;
use File::Temp ();
use Digest::SHA qw(sha1_hex);
use Fcntl qw(O_WRONLY O_APPEND O_CREAT);
use Time::HiRes qw(sleep time);

my $have_ssl = eval { require IO::Socket::SSL; 1 };

my $EV = File::Temp::tempdir("apx-ws-XXXXXX", TMPDIR => 1, CLEANUP => !$ENV{APX_KEEP}) . "/events";
sub blog {
    my ($line) = @_;
    sysopen(my $fh, $EV, O_WRONLY | O_APPEND | O_CREAT) or return;
    syswrite($fh, sprintf("%s %.6f\n", $line, time));
    close $fh;
}
sub backend_log {
    open my $fh, '<', $EV or return ();
    return map { chomp; [split / /] } <$fh>;
}
sub seen { my ($what, $id) = @_; return scalar grep { $_->[0] eq $what && $_->[1] eq $id } backend_log() }

# /ws/echo/ID: echo; /ws/flood/ID: sends 16 KiB binary frames as fast as the
# proxy takes them; /ws/deny: 403; /plain: 200.
my $b = APX::Backend->new(handler => sub {
    my ($req, $conn) = @_;
    my $t = $req->{target};
    return APX::Backend::response(200, "plain\n") if $t eq '/plain';
    return APX::Backend::response(403, "denied\n") if $t eq '/ws/deny';
    my ($kind, $id) = $t =~ m{^/ws/(echo|flood|sink)/(\w+)} or return APX::Backend::response(404, "no\n");
    my $key = $req->{hdr}{'sec-websocket-key'};
    blog("upgrade $id " . ($req->{hdr}{upgrade} // '-') . '/' . ($req->{hdr}{connection} // '-'));
    return APX::Backend::response(426, "upgrade required\n") unless $key && ($req->{hdr}{upgrade} // '') =~ /websocket/i;
    my $s = $conn->{sock};
    send_raw($s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 . "Sec-WebSocket-Accept: " . ws_accept($key) . "\r\n\r\n");
    if ($kind eq 'flood') {
        my $sent = 0;
        my $f = ws_frame(OP_BINARY, 'f' x 16384);
        my $next = 0;
        while (send_raw($s, $f)) {
            $sent += length $f;
            if ($sent >= $next) { blog("flood $id $sent"); $next = $sent + 262144 }
        }
        blog("flood-end $id $sent");
        return [[close => 1]];
    }
    if ($kind eq 'sink') {
        # reads nothing until the test says so (a file), then drains
        blog("sink $id");
        my $go = "$EV.$id.go";
        my $end = time + 60;
        sleep 0.1 until -e $go || time > $end;
        my ($n, $junk) = (0, '');
        while (1) {
            my $r = sysread($s, $junk, 262144);
            last unless $r;
            $n += $r;
        }
        blog("sink-read $id $n");
        return [[close => 1]];
    }
    my $buf = '';
    while (1) {
        my ($op, $p) = ws_read_frame($s, \$buf, 120);
        if ($op eq 'eof') {
            # the client half-closed: say so, then close our side
            blog("eof $id");
            send_raw($s, ws_frame(OP_TEXT, "bye-after-eof"));
            return [[close => 1]];
        }
        if ($op eq 'timeout') { blog("timeout $id"); return [[close => 1]] }
        if ($op == OP_CLOSE) {
            blog("close $id");
            send_raw($s, ws_frame(OP_CLOSE, $p));
            return [[close => 1]];
        }
        if ($op == OP_PING) { blog("ping $id"); send_raw($s, ws_frame(OP_PONG, $p)); next }
        blog("msg $id " . length($p) . ' ' . sha1_hex($p));
        send_raw($s, ws_frame($op, $p)) or do { blog("send-failed $id"); return [[close => 1]] };
    }
});
my $bport = $b->port;

# Opens a WebSocket: { s, status, hdr, buf, key, head }; what follows the
# answer's head (frames, or a refusal's body) stays in buf.
sub ws_open {
    my ($h, $path, %o) = @_;
    my $s = $o{tls} ? connect_tls($h->port) : connect_to($h->port);
    my $key = ws_key();
    my $buf = '';
    my $r = roundtrip($s, \$buf, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n",
                      head_only => 1, timeout => 10);
    return { s => $s, status => 0, buf => $buf } unless $r;
    return { s => $s, status => $r->{status}, hdr => $r->{headers}, buf => $buf, key => $key, head => $r->{head} };
}

sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ }
    return 0;
}

# The echo exchange every transport must pass: text, ping, 1 MiB both ways,
# the close handshake.
sub echo_checks {
    my ($h, $id, $what, %o) = @_;
    my $w = ws_open($h, "/ws/echo/$id", %o);
    is($w->{status}, 101, "$what: 101 Switching Protocols");
    is($w->{hdr}{'sec-websocket-accept'}, ws_accept($w->{key} // ''), "$what: the backend's Sec-WebSocket-Accept relayed");
    like($w->{hdr}{upgrade} // '', qr/^websocket$/i, "$what: Upgrade: websocket");
    like($w->{hdr}{connection} // '', qr/upgrade/i, "$what: Connection: Upgrade");
    my $s = $w->{s};
    my @got;
    for my $i (1 .. 3) {
        send_raw($s, ws_frame(OP_TEXT, "hello $i", 1));
        my ($op, $p) = ws_read_frame($s, \$w->{buf}, 10);
        push @got, "$op:" . ($p // '');
    }
    is("@got", '1:hello 1 1:hello 2 1:hello 3', "$what: text frames echoed in order");
    send_raw($s, ws_frame(OP_PING, 'pp', 1));
    my ($op, $p) = ws_read_frame($s, \$w->{buf}, 10);
    is("$op:" . ($p // ''), '10:pp', "$what: ping answered with pong");
    my $big = join '', map { chr(($_ * 7) % 251) } 0 .. 1048575;
    send_raw($s, ws_frame(OP_BINARY, $big, 1));
    ($op, $p) = ws_read_frame($s, \$w->{buf}, 30);
    ok($op eq '2' && defined $p && length($p) == 1048576 && $p eq $big, "$what: a 1 MiB message there and back, intact");
    ok(wait_for(sub { grep { $_->[0] eq 'msg' && $_->[1] eq $id && $_->[2] == 1048576 && $_->[3] eq sha1_hex($big) } backend_log() }, 5),
       "$what: the backend received the 1 MiB message intact");
    send_raw($s, ws_frame(OP_CLOSE, pack('n', 1000) . 'bye', 1));
    ($op, $p) = ws_read_frame($s, \$w->{buf}, 10);
    is("$op:" . ($p // ''), '8:' . pack('n', 1000) . 'bye', "$what: close handshake answered");
    ($op) = ws_read_frame($s, \$w->{buf}, 10);
    is($op, 'eof', "$what: the connection ends after the close handshake");
    ok(seen('close', $id), "$what: the backend saw the close frame");
    close $s;
}

my $MAPS = "AsyncProxyPass /ws/ http://127.0.0.1:$bport/ws/ upgrade=websocket\n"
         . "AsyncProxyPass /wsany/ http://127.0.0.1:$bport/ws/ upgrade=*\n"
         . "AsyncProxyPass /nows/ http://127.0.0.1:$bport/ws/\n"
         . "AsyncProxyPass /wsidle/ http://127.0.0.1:$bport/ws/ upgrade=websocket tunneltimeout=1500ms\n"
         . "AsyncProxyPass /plain http://127.0.0.1:$bport/plain\n";

my $h = APX::Httpd->new(mpm => 'event', threads => 10, timeout => 3,
                        global => "AsyncProxyWorkers 2 2\n", conf => $MAPS);
$h->start;
my $f0 = figures($h->port);
ok(defined $f0->{TunnelsTotal}, 'figures TunnelsNow/TunnelsTotal/TunnelBytesIn/TunnelBytesOut exist');

echo_checks($h, 'e1', 'ws');
{
    my ($u) = grep { $_->[0] eq 'upgrade' && $_->[1] eq 'e1' } backend_log();
    like($u->[2] // '', qr{^websocket/Upgrade$}i, 'the backend got Upgrade: websocket and Connection: Upgrade');
}
echo_checks($h, 'e2', 'upgrade=*', ) if 1;

# The access log line is written when the tunnel closes: 101 and the bytes.
{
    my $w = ws_open($h, '/ws/echo/l1');
    is($w->{status}, 101, 'log: tunnel open');
    send_raw($w->{s}, ws_frame(OP_TEXT, 'x' x 1000, 1));
    my ($op) = ws_read_frame($w->{s}, \$w->{buf}, 10);
    is($op, 1, 'log: echo');
    sleep 0.5;
    my @open = grep { m{GET /ws/echo/l1 } } split /\n/, $h->slurp_log($h->access_log);
    is(scalar(@open), 0, 'log: no access-log line while the tunnel is open');
    ok((figures($h->port)->{TunnelsNow} // 0) >= 1, 'TunnelsNow counts the open tunnel');
    send_raw($w->{s}, ws_frame(OP_CLOSE, pack('n', 1000), 1));
    ws_read_frame($w->{s}, \$w->{buf}, 10);
    ws_read_frame($w->{s}, \$w->{buf}, 10);
    close $w->{s};
    my @l;
    wait_for(sub { @l = grep { m{GET /ws/echo/l1 } } split /\n/, $h->slurp_log($h->access_log); @l }, 5);
    like($l[0] // '', qr{" 101 (\d+) (\d+) }, 'log: one line, status 101, after the close');
    my ($bytes, $usec) = ($l[0] // '') =~ /" 101 (\d+) (\d+) /;
    ok(($bytes // 0) >= 1000, "log: %b counts the bytes to the client (" . ($bytes // '-') . ")");
    ok(($usec // 0) >= 500000, 'log: %D spans the tunnel\'s life');
}

# Without upgrade= the Upgrade is stripped (hop-by-hop): an ordinary answer.
{
    my $w = ws_open($h, '/nows/echo/n1');
    is($w->{status}, 426, 'no upgrade=: the backend got no Upgrade and answered 426 as a plain response');
    my ($u) = grep { $_->[0] eq 'upgrade' && $_->[1] eq 'n1' } backend_log();
    is($u->[2] // '', '-/-', 'no upgrade=: neither Upgrade nor Connection reached the backend');
    close $w->{s};
    # a non-101 answer to an allowed upgrade is an ordinary response
    $w = ws_open($h, '/ws/deny');
    is($w->{status}, 403, 'backend refuses the upgrade: its 403 is relayed as a response');
    close $w->{s};
}

# Half-close: the client shuts down its sending side; the backend sees EOF,
# and what it sends afterwards still reaches the client.
{
    my $w = ws_open($h, '/ws/echo/h1');
    send_raw($w->{s}, ws_frame(OP_TEXT, 'before', 1));
    my ($op, $p) = ws_read_frame($w->{s}, \$w->{buf}, 10);
    is($p, 'before', 'half-close: echo before');
    shutdown($w->{s}, 1);
    ok(wait_for(sub { seen('eof', 'h1') }, 5), 'half-close: the backend saw EOF');
    ($op, $p) = ws_read_frame($w->{s}, \$w->{buf}, 10);
    is($p, 'bye-after-eof', 'half-close: the backend\'s message after the client\'s FIN arrived');
    ($op) = ws_read_frame($w->{s}, \$w->{buf}, 10);
    is($op, 'eof', 'half-close: then the connection ends');
    close $w->{s};
}

# Idle timeout: tunneltimeout=1500ms closes a quiet tunnel, both sides.
{
    my $w = ws_open($h, '/wsidle/echo/i1');
    is($w->{status}, 101, 'idle: open');
    my $t0 = time;
    my ($op) = ws_read_frame($w->{s}, \$w->{buf}, 10);
    my $dt = time - $t0;
    is($op, 'eof', 'idle: the quiet tunnel was closed');
    ok($dt > 1.2 && $dt < 6, sprintf('idle: after about tunneltimeout (%.1fs)', $dt));
    ok(wait_for(sub { seen('eof', 'i1') }, 5), 'idle: the backend saw its connection end');
    close $w->{s};
    # a tunnel that talks is not idle, even past the timeout
    $w = ws_open($h, '/wsidle/echo/i2');
    my $ok = 1;
    for (1 .. 4) {
        sleep 0.8;
        send_raw($w->{s}, ws_frame(OP_TEXT, "k$_", 1));
        my ($o, $p) = ws_read_frame($w->{s}, \$w->{buf}, 5);
        $ok = 0 unless ($p // '') eq "k$_";
    }
    ok($ok, 'idle: a tunnel with traffic every 0.8 s lives past 1.5 s');
    close $w->{s};
}

# Hostile: four clients that stop reading floods. The backend's sends are
# throttled (bounded by socket buffers), the child's memory does not grow,
# and with 2 module workers ordinary requests and another tunnel go on.
{
    my ($child) = $h->children;
    my $rss0 = rss_kb($child);
    my @w;
    for my $k (1 .. 4) {
        my $w = ws_open($h, "/ws/flood/f$k");
        setsockopt($w->{s}, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 4096);
        push @w, $w;
    }
    is(scalar(grep { $_->{status} == 101 } @w), 4, 'flood: four tunnels open');
    ok(wait_for(sub { my %k = map { $_->[1] => 1 } grep { $_->[0] eq 'flood' } backend_log(); keys(%k) >= 4 }, 10),
       'flood: the backends are sending');
    my $most = sub {
        my %m;
        for (backend_log()) { $m{$_->[1]} = $_->[2] if $_->[0] eq 'flood' && $_->[2] > ($m{$_->[1]} // 0) }
        my $x = 0;
        $x = $_ > $x ? $_ : $x for values %m;
        return $x;
    };
    sleep 2;
    my $m1 = $most->();
    my @plain = map { request($h->port, get_req('/plain'), timeout => 5) } 1 .. 5;
    is(scalar(grep { $_ && $_->{status} == 200 } @plain), 5, 'flood: ordinary requests answered alongside');
    my $e = ws_open($h, '/ws/echo/f9');
    send_raw($e->{s}, ws_frame(OP_TEXT, 'still here', 1));
    my ($op, $p) = ws_read_frame($e->{s}, \$e->{buf}, 5);
    is($p, 'still here', 'flood: another tunnel echoes alongside');
    close $e->{s};
    sleep 2;
    my $m2 = $most->();
    ok($m2 < 64 * 1048576, "flood: the most a backend could send is $m2 bytes (socket buffers, < 64 MiB)");
    ok($m2 - $m1 < 4 * 1048576, 'flood: throttled: ' . ($m2 - $m1) . ' bytes more over ~3 s (< 4 MiB)');
    is(scalar(grep { $_->[0] eq 'flood-end' } backend_log()), 0, 'flood: no backend send failed while the clients were connected');
    my $grow = rss_kb($child) - $rss0;
    ok($grow < 16384, "flood: the child's RSS grew by $grow KiB (< 16 MiB)");
    my $f = figures($h->port);
    is($f->{TunnelsNow}, 4, 'flood: TunnelsNow 4');
    close $_->{s} for @w;
    ok(wait_for(sub { (figures($h->port)->{TunnelsNow} // -1) == 0 }, 10), 'flood clients gone: TunnelsNow 0');
    ok(wait_for(sub { scalar(grep { $_->[0] eq 'flood-end' } backend_log()) == 4 }, 10),
       'flood clients gone: every backend connection was closed');
}
# Hostile, the other way: a backend that reads nothing while the client
# sends as fast as it can. The client's writes stall (TCP pushes back
# through the tunnel), the child does not buffer, and everything the client
# managed to send reaches the backend once it reads.
{
    my ($child) = $h->children;
    my $rss0 = rss_kb($child);
    my $w = ws_open($h, '/ws/sink/k1');
    is($w->{status}, 101, 'sink: open');
    my $s = $w->{s};
    $s->blocking(0);
    my $frame = ws_frame(OP_BINARY, 'k' x 65536, 1);
    my ($sent, $pending, $stalled_at) = (0, '', undef);
    my $end = time + 20;
    my $last_progress = time;
    while (time < $end) {
        $pending = $frame if $pending eq '';
        my $n = syswrite($s, $pending);
        if ($n) { $sent += $n; substr($pending, 0, $n, ''); $last_progress = time; next }
        last if time - $last_progress > 2;      # no progress for 2 s: stalled
        IO::Select->new($s)->can_write(0.2);
    }
    ok(time - $last_progress > 2, "sink: the client's writes stalled after $sent bytes");
    ok($sent < 96 * 1048576, 'sink: bounded by socket buffers (< 96 MiB)');
    my $grow = rss_kb($child) - $rss0;
    ok($grow < 16384, "sink: the child's RSS grew by $grow KiB (< 16 MiB)");
    my $plain = request($h->port, get_req('/plain'), timeout => 5);
    is($plain && $plain->{status}, 200, 'sink: an ordinary request alongside');
    # let the backend read; then the client's last partial frame completes
    open my $go, '>', "$EV.k1.go" or die;
    close $go;
    $s->blocking(1);
    send_raw($s, $pending);
    $sent += length $pending;
    shutdown($s, 1);
    ok(wait_for(sub { grep { $_->[0] eq 'sink-read' && $_->[1] eq 'k1' } backend_log() }, 20), 'sink: the backend read to EOF');
    my ($r) = grep { $_->[0] eq 'sink-read' && $_->[1] eq 'k1' } backend_log();
    is($r && $r->[2], $sent, 'sink: the backend got every byte the client sent');
    close $s;
}
# Hostile: a client that resets while the backend takes nothing (its
# bytes wait in the tunnel, so the client's side is not read). The tunnel
# still watches the client for its end: the reset closes the tunnel at
# once, not at the idle timeout (default, minutes), and the backend side is
# closed too.
{
    my $w = ws_open($h, '/ws/sink/k2');
    is($w->{status}, 101, 'reset: open');
    my $s = $w->{s};
    $s->blocking(0);
    my $frame = ws_frame(OP_BINARY, 'r' x 65536, 1);
    my ($pending, $last_progress, $end) = ('', time, time + 20);
    while (time < $end) {
        $pending = $frame if $pending eq '';
        my $n = syswrite($s, $pending);
        if ($n) { substr($pending, 0, $n, ''); $last_progress = time; next }
        last if time - $last_progress > 1;
        IO::Select->new($s)->can_write(0.2);
    }
    is(figures($h->port)->{TunnelsNow}, 1, 'reset: the stalled tunnel is open');
    setsockopt($s, Socket::SOL_SOCKET(), Socket::SO_LINGER(), pack('ii', 1, 0));
    close $s;       # RST: unread data in our receive queue or linger 0
    ok(wait_for(sub { (figures($h->port)->{TunnelsNow} // -1) == 0 }, 15),
       'reset: the tunnel closed when the client reset (TunnelsNow 0), long before its idle timeout');
    open my $go, '>', "$EV.k2.go" or die;
    close $go;
    ok(wait_for(sub { grep { $_->[0] eq 'sink-read' && $_->[1] eq 'k2' } backend_log() }, 20),
       'reset: the backend side was closed (the backend read to EOF)');
}
{
    my $f = figures($h->port);
    ok(($f->{TunnelsTotal} // 0) >= 8, "TunnelsTotal $f->{TunnelsTotal}");
    ok(($f->{TunnelBytesIn} // 0) > 2 * 1048576, 'TunnelBytesIn counts (two 1 MiB messages and more)');
    ok(($f->{TunnelBytesOut} // 0) > 2 * 1048576, 'TunnelBytesOut counts');
}
is(join(' ', $h->error_lines), '', 'no errors in the log');
$h->stop;

# The worker MPM cannot park: the same tunnel runs on the request's
# thread, both sockets polled in place (the sync driver of apx_wait2).
{
    my $wk = APX::Httpd->new(mpm => 'worker', threads => 10, timeout => 3, conf => $MAPS);
    $wk->start;
    echo_checks($wk, 'w1', 'worker MPM');
    my $w = ws_open($wk, '/wsidle/echo/w2');
    my ($op) = ws_read_frame($w->{s}, \$w->{buf}, 10);
    is($op, 'eof', 'worker MPM: idle timeout closes');
    close $w->{s};
    is(join(' ', $wk->error_lines), '', 'worker MPM: no errors in the log');
    $wk->stop;
}

SKIP: {
    skip 'IO::Socket::SSL is not installed', 13 unless $have_ssl;
    my $t = APX::Httpd->new(mpm => 'event', threads => 10, timeout => 3, tls => 1,
                            global => "AsyncProxyWorkers 2 2\n", conf => $MAPS);
    $t->start;
    echo_checks($t, 's1', 'wss', tls => 1);
    my $w = ws_open($t, '/wsidle/echo/s2', tls => 1);
    my ($op) = ws_read_frame($w->{s}, \$w->{buf}, 10);
    is($op, 'eof', 'wss: idle timeout closes');
    ok(wait_for(sub { seen('eof', 's2') }, 5), 'wss idle: the backend saw its connection end');
    is(join(' ', $t->error_lines), '', 'wss: no errors in the log');
    $t->stop;
}

$b->stop;
done_testing();
