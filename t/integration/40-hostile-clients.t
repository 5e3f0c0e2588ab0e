#!/usr/bin/perl
# Hostile clients cannot stall the engine (issue 10): no byte pattern holds a
# module worker or an MPM thread. A real httpd (event MPM, one child, 25
# MPM threads, the module's default workers, mod_reqtimeout as Debian ships
# it) in front of slowd. For each attack, normal proxied traffic (8 clients,
# a new connection per request, a 200 ms backend) is measured before and
# while the attack holds, and the server's own figures say where the
# attackers are: parked in the poller, or on the lane, never on a worker.
#   - 500 clients hold a partial pipelined head (one proxied GET, then "G");
#   - 100 clients trickle a head of 66 KB and more, a byte every 2 s;
#   - 200 clients upload slowly to a static file (another handler) on
#     adopted connections;
#   - 2,000 idle adopted connections at the child's connection limit;
#   - 500 Slowloris clients trickle their *first* head (no request yet);
#   - over TLS: partial heads, and a 20 KB head on an adopted connection;
#   - a partial head past mod_reqtimeout's header stage gets 408.
# The attacks run from t/tools/hostile.c (epoll, bounded, stops by itself).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Client qw(:all);
use POSIX ();
use Time::HiRes qw(sleep time);

my $TOP = APX::Httpd::top();
my $HOSTILE = $ENV{APX_HOSTILE} || "$TOP/build/t/hostile";
plan skip_all => "$HOSTILE is not built (make build/t/hostile)" unless -x $HOSTILE;
plan skip_all => 'build/bench/slowd is not built (make -C bench slowd)'
    unless -x ($ENV{APX_SLOWD} || "$TOP/build/bench/slowd");

# The attack must not move normal traffic's p99 by more than this. The issue
# asks for 50 ms; a shared 2-core CI box under ASan needs headroom, and the
# attacks, where they work, cost seconds (19-40 s measured on 0.x).
my $SLACK_MS = $ENV{APX_HOSTILE_SLACK_MS} || 300;

my $sd = start_slowd();
my $MAP = "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n";
my $REQTIMEOUT = "RequestReadTimeout header=20-40,MinRate=500 body=20,MinRate=500\n";

sub parse_done {
    my ($line) = @_;
    return {} unless defined $line && $line =~ /^done /;
    return { $line =~ /(\w+)=(\S+)/g };
}

# Normal traffic: $n requests, 8 at a time, each on a new connection.
sub normal {
    my ($port, $n) = @_;
    my $out = `$HOSTILE -p $port -m normal -c 8 -n $n -u /s/delay/200/100 -d 90`;
    my ($line) = $out =~ /^(done .*)$/m;
    return parse_done($line);
}

# Starts an attack in the background; returns once it says "ready N"
# (its output is read with APX::Client's wait_line()).
sub attack {
    my ($port, @args) = @_;
    my $pid = open(my $fh, '-|', $HOSTILE, '-p', $port, @args) or die "hostile: $!";
    my $job = { pid => $pid, fh => $fh, buf => '' };
    my $line = wait_line($job, qr/^ready (\d+)/, 60);
    ($job->{ready}) = ($line // '') =~ /^ready (\d+)/;
    $job->{ready} //= 0;
    return $job;
}

sub stop_attack {
    my ($job) = @_;
    kill 'TERM', $job->{pid};
    my $line = wait_line($job, qr/^done /, 30);
    close $job->{fh};
    waitpid($job->{pid}, 0);
    return parse_done($line);
}

sub fig {
    my ($h, $name) = @_;
    return figures($h->port)->{$name} // 0;
}

# During the attack: every normal request answered 200, p99 within the slack.
sub check_normal {
    my ($what, $h, $base, $n) = @_;
    my $r = normal($h->port, $n);
    is($r->{ok} // 0, $n, "$what: all $n normal proxied requests answered 200 meanwhile");
    my $d = ($r->{p99_ms} // 1e9) - $base->{p99_ms};
    cmp_ok($d, '<=', $SLACK_MS, sprintf("%s: normal p99 %.0f ms, %+.0f ms against %.0f ms without the attack",
                                        $what, $r->{p99_ms} // -1, $d, $base->{p99_ms}));
    return $r;
}

# --- connections that end while the server is quiet ---------------------------
# A keep-alive connection whose next head is not whole yet is handed over by
# an MPM thread whose scoreboard slot still says SERVER_READY, the value it
# writes again when it leaves: until 0.x the hand-over gate then waited for
# that thread's next unit of work — on a quiet server, for ever: the record
# looked at again every millisecond, the connection left in CLOSE-WAIT after
# its client closed it.
# ExtendedStatus Off (mod_status loaded turns it on) leaves only the slot's
# status for the gate to look at.
# mod_logio (built into Debian's apache2) %I: the module reads heads of
# adopted connections with recv() itself,
# and counts them.
my $hq = APX::Httpd->new(
    mpm => 'event', threads => 25, timeout => 60, keepalive_timeout => 60,
    global => "ExtendedStatus Off\n",
    conf => $MAP . "LogFormat \"%I %m %U\" inlog\nCustomLog logs/in_log inlog\n",
);
$hq->start;
{
    my $n0 = fig($hq, 'HeadsAdopted');
    my $answered = 0;
    for (1 .. 20) {
        my $c = connect_to($hq->port);
        my $b = '';
        print $c get_req('/apx-status');
        read_response($c, \$b, timeout => 5);
        send_raw($c, "GET /s/delay/0/10 HTTP/1.1\r\n");
        sleep 0.05;
        my $r = roundtrip($c, \$b, "Host: x\r\n\r\n", timeout => 5);
        $answered++ if $r && $r->{status} == 200;
        close $c;
    }
    is($answered, 20, 'quiet server: 20 next heads sent in two parts, all answered');
    sleep 1;
    my $r0 = fig($hq, 'GateRequeues');
    sleep 2;
    my $r = fig($hq, 'GateRequeues') - $r0;
    my $ka = fig($hq, 'HeadsAdopted') - $n0;
    cmp_ok($ka, '>', 0, "quiet server: connections taken over at their next head ($ka)");
    cmp_ok($r, '<', 100, "quiet server: no gate is looked at over and over (GateRequeues +$r in 2 s)");
    my $p = $hq->port;
    my @cw = grep { /\S/ } split /\n/, `ss -Htn state close-wait '( sport = :$p )'`;
    is(scalar @cw, 0, 'quiet server: every connection its client closed is closed (no CLOSE-WAIT)')
        or diag(join "\n", @cw[0 .. ($#cw < 4 ? $#cw : 4)]);
}
# Keep-alive requests on one connection (the first served by the MPM, the
# others adopted, their heads read by the module; a body read through the
# filters in between), then two pipelined in one write: every answer in
# order, and %I of each sequential request is its exact size.
{
    my $c = connect_to($hq->port);
    my $b = '';
    my @reqs = (
        "GET /s/delay/0/11?a HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /s/delay/0/11?bb HTTP/1.1\r\nHost: x\r\nX-Pad: " . ('p' x 300) . "\r\n\r\n",
        "POST /s/delay/0/11?ccc HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "GET /s/delay/0/11?dddd HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /s/delay/0/11?eeeee HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    my $ok = 0;
    for my $q (@reqs) {
        my $r = roundtrip($c, \$b, $q);
        $ok++ if $r && $r->{status} == 200;
    }
    is($ok, scalar @reqs, 'keep-alive: ' . scalar(@reqs) . ' requests on one connection answered 200');
    send_raw($c, "GET /s/delay/0/11?p1 HTTP/1.1\r\nHost: x\r\n\r\n"
               . "GET /apx-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    my $r1 = read_response($c, \$b, timeout => 5);
    my $r2 = read_response($c, \$b, timeout => 5);
    ok($r1 && $r1->{status} == 200 && $r2 && $r2->{status} == 200 && $r2->{body} =~ /^AsyncProxy/m,
       'pipelined after adopted keep-alive requests: both answered, in order');
    close $c;
    my $log = $hq->dir . '/logs/in_log';
    for (1 .. 50) {
        last if ($hq->slurp_log($log) =~ tr/\n//) >= @reqs + 2;
        sleep 0.1;
    }
    my @lines = split /\n/, $hq->slurp_log($log);
    my @seq = grep { m{ /s/delay/0/11$} } @lines;
    my @got = map { (split / /)[0] } @seq[0 .. $#reqs];
    my @want = map { length } @reqs;
    is("@got", "@want", '%I of each keep-alive request is its size (mod_logio, heads read by the module counted)');
}
# The poller's kept arms: on a connection the module owns, the client is
# watched for hangup during the backend wait with an arm that also reports
# input, so the keep-alive wait after the response can take that arm. A
# request that comes during the backend wait (pipelined late) must not end
# that wait: the watch is re-armed for the hangup only, both requests are
# answered in order, and a client that then goes is still seen going.
{
    my $w0 = fig($hq, 'Rewatches');
    my $k0 = fig($hq, 'ArmsKept') + fig($hq, 'ArmsFired');
    my $g0 = fig($hq, 'ClientGone');
    my $c = connect_to($hq->port);
    my $b = '';
    my $r0 = roundtrip($c, \$b, "GET /s/delay/0/5?first HTTP/1.1\r\nHost: x\r\n\r\n");
    send_raw($c, "GET /s/delay/400/7?one HTTP/1.1\r\nHost: x\r\n\r\n");
    sleep 0.15;
    send_raw($c, "GET /s/delay/0/9?two HTTP/1.1\r\nHost: x\r\n\r\n");
    my $r1 = read_response($c, \$b, timeout => 5);
    my $r2 = read_response($c, \$b, timeout => 5);
    ok($r0 && $r0->{status} == 200 && $r1 && $r1->{status} == 200 && length($r1->{body}) == 7
       && $r2 && $r2->{status} == 200 && length($r2->{body}) == 9,
       'a request sent during the backend wait of the one before: both answered, in order');
    my $ok = 0;
    for my $i (1 .. 5) {
        my $r = roundtrip($c, \$b, "GET /s/delay/20/11?k$i HTTP/1.1\r\nHost: x\r\n\r\n");
        $ok++ if $r && $r->{status} == 200 && length($r->{body}) == 11;
        sleep 0.05;
    }
    is($ok, 5, 'the keep-alive requests after it: all answered');
    cmp_ok(fig($hq, 'Rewatches') - $w0, '>=', 1,
           'the early request re-armed the client\'s watch for the hangup only (Rewatches)');
    cmp_ok(fig($hq, 'ArmsKept') + fig($hq, 'ArmsFired') - $k0, '>=', 5,
           'keep-alive waits took the arm left by the watch before them (ArmsKept + ArmsFired)');
    # input, then a close, both during the backend wait: the close is seen
    # while the backend has not answered (the wait is 3 s)
    send_raw($c, "GET /s/delay/3000/5?long HTTP/1.1\r\nHost: x\r\n\r\n");
    sleep 0.15;
    send_raw($c, "GET /s/delay/0/5?more HTTP/1.1\r\nHost: x\r\n\r\n");
    sleep 0.15;
    close $c;
    my $gone = 0;
    for (1 .. 20) {
        $gone = fig($hq, 'ClientGone') - $g0;
        last if $gone;
        sleep 0.1;
    }
    cmp_ok($gone, '>=', 1, 'a client that sent more and then closed during the backend wait is seen gone before the backend answers');
}
$hq->stop;

# ------------------------------------------------------------------------
# server A: one child, 25 MPM threads, default module workers
my $h = APX::Httpd->new(
    mpm => 'event', threads => 25, timeout => 60, keepalive_timeout => 60,
    modules => ['reqtimeout'],
    global => $REQTIMEOUT,
    conf => $MAP,
);
$h->write_file('htdocs/static.html', "static\n" x 10);
$h->start;

my $base = normal($h->port, 200);
is($base->{ok} // 0, 200, 'no attack: 200 normal requests answered');
diag(sprintf("normal traffic without an attack: p50 %.0f ms, p99 %.0f ms",
             $base->{p50_ms} // -1, $base->{p99_ms} // -1));

# --- 500 partial pipelined heads ---------------------------------------------
{
    my ($w0, $s0) = (fig($h, 'HeadWaits'), fig($h, 'IdleShed'));
    my $a = attack($h->port, '-m', 'pipelined', '-c', 500, '-u', '/s/delay/0/100', '-d', 120);
    is($a->{ready}, 500, 'pipelined: 500 connections answered, then sent one byte of a next head');
    # each is parked, or was shed if the MPM stopped accepting meanwhile (a
    # loaded machine): none is on a worker
    ok(wait_for(sub { fig($h, 'IdleNow') + fig($h, 'IdleShed') - $s0 >= 500 }, 10),
       'pipelined: the 500 partial heads wait parked in the poller (IdleNow)');
    cmp_ok(fig($h, 'HeadWaits') - $w0, '>=', 500, 'pipelined: ... each counted as a head wait');
    check_normal('pipelined x500', $h, $base, 200);
    my $shed = fig($h, 'IdleShed') - $s0;
    my $d = stop_attack($a);
    cmp_ok($d->{server_closed} // -1, '<=', $shed,
           "pipelined: no attacker was closed before its deadline but the shed ones ($shed)");
}

# --- 100 trickled heads of 66 KB+ ----------------------------------------------
{
    my $s0 = fig($h, 'IdleShed');
    my $a = attack($h->port, '-m', 'bighead', '-c', 100, '-s', 66000, '-i', 2000,
                   '-u', '/s/delay/0/100', '-d', 120);
    is($a->{ready}, 100, 'big heads: 100 adopted connections sent 66 KB of a next head');
    ok(wait_for(sub { fig($h, 'IdleNow') + fig($h, 'IdleShed') - $s0 >= 100 }, 15),
       'big heads: they wait parked (IdleNow), none handed to httpd unfinished');
    check_normal('66 KB heads x100', $h, $base, 200);
    my $shed = fig($h, 'IdleShed') - $s0;
    my $d = stop_attack($a);
    cmp_ok($d->{server_closed} // -1, '<=', $shed,
           "big heads: within the header deadline, none was cut but the shed ones ($shed)");
}

# --- 200 slow uploads to another handler on adopted connections ---------------
{
    my ($t0, $r0) = (fig($h, 'LaneTotal'), fig($h, 'LaneRejected'));
    my $a = attack($h->port, '-m', 'slowbody', '-c', 200, '-t', '/static.html',
                   '-s', 100000, '-i', 1000, '-u', '/s/delay/0/100', '-d', 120);
    is($a->{ready}, 200, 'slow uploads: 200 adopted connections started a POST to a static file');
    # normal traffic first: mod_reqtimeout's body stage ends the uploads
    # after 20 s, and with them the attack
    check_normal('slow uploads x200', $h, $base, 200);
    my $st = figures($h->port);
    is($st->{LaneBusy} // -1, $st->{LaneThreadsMax} // -2,
       'slow uploads: they hold the lane\'s threads (LaneBusy = LaneThreadsMax = '
       . ($st->{LaneThreadsMax} // '?') . '), not the workers');
    cmp_ok(($st->{LaneRejected} // 0) - $r0, '>', 0,
           'slow uploads: past the lane\'s threads and queue, 503 (LaneRejected)');
    cmp_ok(($st->{LaneTotal} // 0) - $t0, '>=', 25, 'slow uploads: the lane took them');
    stop_attack($a);
    ok(wait_for(sub { fig($h, 'LaneBusy') == 0 }, 20), 'slow uploads: the lane is free again once they leave');
}

# --- Slowloris on first heads ---------------------------------------------------
{
    my $n0 = fig($h, 'HeadsAdopted');
    my $a = attack($h->port, '-m', 'slowloris', '-c', 500, '-i', 2000, '-u', '/s/delay/0/100', '-d', 120);
    ok(wait_for(sub { fig($h, 'HeadsAdopted') - $n0 >= 450 }, 20),
       'first-head Slowloris: the module took the slow heads from the MPM threads (HeadsAdopted +'
       . (fig($h, 'HeadsAdopted') - $n0) . ')');
    check_normal('first-head Slowloris x500', $h, $base, 200);
    stop_attack($a);
}

# --- a head past the header stage gets 408 -------------------------------------
my $h2 = APX::Httpd->new(
    mpm => 'event', threads => 25, timeout => 60, keepalive_timeout => 30,
    modules => ['reqtimeout'],
    global => "RequestReadTimeout header=2-3,MinRate=500\n",
    conf => $MAP,
);
$h2->start;
{
    my $t0 = fig($h2, 'HeadTimeouts');
    my $s = connect_to($h2->port);
    print $s get_req('/s/delay/0/10');
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 5);
    is($r && $r->{status}, 200, '408: the first request is answered (the connection is adopted)');
    my $t = time;
    print $s "GET /s/delay/0/10 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    $r = read_response($s, \$buf, timeout => 10);
    my $took = time - $t;
    is($r && $r->{status}, 408, 'a partial next head is answered 408');
    cmp_ok($took, '>=', 1.5, sprintf('... after the header stage of RequestReadTimeout header=2-3 (%.1f s)', $took));
    my (undef, $closed) = read_to_eof($s, 5);
    ok($closed, '... and the connection closed');
    is(fig($h2, 'HeadTimeouts') - $t0, 1, '... counted in HeadTimeouts');
    close $s;

    # heads over httpd's limits, trickled after the limit: answered at once
    # from what is buffered (httpd's own 414/400), not after the deadline
    for my $case (['request line over LimitRequestLine', "GET /s/" . ('a' x 9000), 414],
                  ['field over LimitRequestFieldSize',
                   "GET /s/delay/0/10 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " . ('b' x 9000), 400]) {
        my ($what, $bytes, $want) = @$case;
        my $c = connect_to($h2->port);
        print $c get_req('/s/delay/0/10');
        my $b = '';
        my $r0 = read_response($c, \$b, timeout => 5);
        print $c $bytes;
        my $t1 = time;
        my $r1 = read_response($c, \$b, timeout => 10);
        is($r1 && $r1->{status}, $want, "adopted connection, $what: $want");
        cmp_ok(time - $t1, '<', 1.5, sprintf('... at once, not at the header deadline (%.2f s)', time - $t1));
        close $c;
    }

    # the first head of a new connection, too, in the poller
    $s = connect_to($h2->port);
    $t = time;
    print $s "GET /s/delay/0/10 HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    $buf = '';
    $r = read_response($s, \$buf, timeout => 10);
    is($r && $r->{status}, 408, 'a partial first head is answered 408 by the module');
    close $s;
}
$h2->stop;

# LimitRequestFields 0 (no limit in httpd): the module still bounds a head
my $h3 = APX::Httpd->new(
    mpm => 'event', threads => 25, timeout => 60, keepalive_timeout => 30,
    global => "LimitRequestFields 0\n", conf => $MAP,
);
$h3->start;
{
    my $r0 = fig($h3, 'HeadRefused');
    my $c = connect_to($h3->port);
    print $c get_req('/s/delay/0/10');
    my $b = '';
    read_response($c, \$b, timeout => 5);
    local $SIG{PIPE} = 'IGNORE';
    my $field = 'X-F: ' . ('c' x 1000) . "\r\n";
    print $c "GET /s/delay/0/10 HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    for (1 .. 1100) { last unless print $c $field }
    my $r1 = read_response($c, \$b, timeout => 10);
    is($r1 && $r1->{status}, 431, 'LimitRequestFields 0: a head past 1 MiB is refused by the module (431)');
    is(fig($h3, 'HeadRefused') - $r0, 1, '... counted in HeadRefused');
    close $c;
}
$h3->stop;

# ------------------------------------------------------------------------
# server B: 2,000 idle adopted connections at the child's connection limit
# (25 threads, AsyncRequestWorkerFactor 2 as Debian ships it: the event MPM
# stops accepting at about 75 connections; without shedding the idle ones
# keep it so until KeepAliveTimeout)
my $hb = APX::Httpd->new(
    mpm => 'event', threads => 25, factor => 2, timeout => 60,
    keepalive_timeout => 60, conf => $MAP,
);
$hb->start;
{
    my $base_b = normal($hb->port, 100);
    is($base_b->{ok} // 0, 100, 'limit: 100 normal requests before the attack');
    my $a = attack($hb->port, '-m', 'idle', '-c', 2000, '-u', '/s/delay/0/100', '-d', 120);
    cmp_ok($a->{ready}, '>=', 1500, "limit: $a->{ready} of 2,000 idle adopted connections were answered, "
                                    . "far past the child's limit");
    ok(wait_for(sub { fig($hb, 'IdleShed') > 0 }, 20),
       'limit: the oldest idle adopted connections are shed (IdleShed ' . fig($hb, 'IdleShed') . ')');
    check_normal('2,000 idle at the connection limit', $hb, $base_b, 100);
    my $d = stop_attack($a);
    cmp_ok($d->{server_closed} // 0, '>', 0, 'limit: the shed connections were closed by the server');
}
$hb->stop;

# ------------------------------------------------------------------------
# server C: TLS
my $hc = APX::Httpd->new(
    mpm => 'event', threads => 25, timeout => 60, keepalive_timeout => 60, tls => 1,
    global => "AsyncProxyWorkers 1 1\n", conf => $MAP,
);
$hc->start;
SKIP: {
    eval { require IO::Socket::SSL; 1 } or skip 'IO::Socket::SSL missing', 8;
    my $tls = sub { return eval { connect_tls($hc->port) } };
    # 30 TLS connections with a partial next head; one worker only
    my @held;
    for (1 .. 30) {
        my $s = $tls->() or next;
        print $s get_req('/s/delay/0/10');
        my $buf = '';
        my $r = read_response($s, \$buf, timeout => 5);
        next unless $r && $r->{status} == 200;
        print $s "GET /s/delay/0/10 HTTP/1.1\r\nHost: 1";
        push @held, $s;
    }
    is(scalar @held, 30, 'TLS: 30 adopted connections hold a partial next head');
    my $ok = 0;
    for (1 .. 10) {
        my $s = $tls->() or next;
        print $s get_req('/s/delay/50/10', Connection => 'close');
        my $buf = '';
        my $r = read_response($s, \$buf, timeout => 10);
        $ok++ if $r && $r->{status} == 200;
    }
    is($ok, 10, 'TLS: with the only module worker free, 10 other requests are answered');

    # a 20 KB head on an adopted TLS connection (mod_ssl peeks 8 KiB at most)
    my $s = $tls->();
    print $s get_req('/s/delay/0/10');
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 5);
    my %big = map { sprintf('X-Big-%02d', $_) => 'b' x 1000 } 1 .. 20;
    print $s get_req('/s/delay/0/77', %big);
    $r = read_response($s, \$buf, timeout => 10);
    is($r && $r->{status}, 200, 'TLS: a 20 KB head on an adopted connection is read and answered');
    is($r && length($r->{body}), 77, '... with its body');
    close $_ for @held;

    # first heads over TLS: 60 connections stall in the handshake (TCP only,
    # no ClientHello) and 60 finish it and trickle a head, on 25 MPM threads
    my $tls_fig = sub { my ($name) = @_; return figures($hc->port, tls => 1)->{$name} // 0 };
    my $a0 = $tls_fig->('HeadsAdopted');
    # (5 bytes: a TLS record header announcing a ClientHello that never
    # comes; mod_ssl's own handshake would wait for it on an MPM thread)
    my @stall = grep { defined } map { my $c = connect_to($hc->port); print $c "\x16\x03\x01\x02\x00"; $c } 1 .. 60;
    my @slow;
    for (1 .. 60) {
        my $s = $tls->() or next;
        print $s "GET /s/delay/0/10 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        push @slow, $s;
    }
    is(scalar(@stall) + scalar(@slow), 120, 'TLS first heads: 60 stalled handshakes, 60 partial heads');
    ok(wait_for(sub { $tls_fig->('IdleNow') >= 120 }, 20),
       'TLS first heads: the 60 stalled handshakes and 60 partial heads wait parked (IdleNow)');
    cmp_ok($tls_fig->('HeadsAdopted') - $a0, '>=', 120,
           '... taken from the MPM threads (HeadsAdopted; the figure reads may add some)');
    $ok = 0;
    for (1 .. 10) {
        my $c = $tls->() or next;
        print $c get_req('/s/delay/0/10', Connection => 'close');
        my $b = '';
        my $r1 = read_response($c, \$b, timeout => 10);
        $ok++ if $r1 && $r1->{status} == 200;
    }
    is($ok, 10, 'TLS first heads: 10 new TLS clients are answered meanwhile');
    close $_ for @stall, @slow;
}
$hc->stop;

# ------------------------------------------------------------------------
# server D: TLS with HTTP/2 allowed. Connections stay with the MPM (mod_http2
# would run a whole h2 session on a module worker if one took them over)
my $hd = APX::Httpd->new(
    mpm => 'event', threads => 25, timeout => 60, tls => 1, modules => ['http2'],
    global => "Protocols h2 http/1.1\n", conf => $MAP,
);
$hd->start;
SKIP: {
    my $curl = `sh -c 'command -v curl'`;
    chomp $curl;
    skip 'curl missing', 2 unless $curl;
    my $u = $hd->url('/s/delay/0/10');
    my $out = `$curl -sk --http2 -o /dev/null -o /dev/null -w '%{http_version} %{http_code} ' $u $u`;
    is($out, '2 200 2 200 ', 'h2 allowed: two proxied requests over one HTTP/2 connection');
    my $st = `$curl -sk ${\ $hd->url('/apx-status')}`;
    my ($adopted) = $st =~ /^AsyncProxyHeadsAdopted: (\d+)$/m;
    is($adopted, 0, 'h2 allowed: no connection is taken over at its first head');
}
$hd->stop;

# h2c allowed: an Upgrade to h2c on a connection the module owns is served
# as HTTP/1.1 (httpd would run the h2 session on the module worker)
my $he = APX::Httpd->new(
    mpm => 'event', threads => 25, timeout => 60, modules => ['http2'],
    global => "Protocols h2c http/1.1\n", conf => $MAP,
);
$he->start;
{
    my $c = connect_to($he->port);
    print $c get_req('/s/delay/0/10');
    my $b = '';
    my $r1 = read_response($c, \$b, timeout => 5);
    is($r1 && $r1->{status}, 200, 'h2c allowed: the first request adopts the connection');
    print $c get_req('/s/delay/0/10', Upgrade => 'h2c', Connection => 'Upgrade, HTTP2-Settings',
                     'HTTP2-Settings' => 'AAMAAABkAARAAAAAAAIAAAAA');
    my $r2 = read_response($c, \$b, timeout => 5);
    is($r2 && $r2->{status}, 200, 'h2c allowed: an Upgrade: h2c on it is answered as HTTP/1.1, not 101');
    close $c;
}
$he->stop;

for my $srv ($hq, $h, $hb, $hc, $hd, $he) {
    my @bad = $srv->error_lines(qr/AH01382|AH00484|AH03104/);
    is(scalar @bad, 0, 'no error-log lines at error level or above') or diag(join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)]);
}
$h->stop;
done_testing();
