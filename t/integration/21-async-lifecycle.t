#!/usr/bin/perl
# The life of parked requests and adopted connections under the event MPM,
# seen from outside:
#   - a client that leaves while its request is parked is noticed at once
#     (EPOLLRDHUP), the request is logged (499) and counted;
#   - the keep-alive timeout closes an idle adopted connection;
#   - a request head that arrives in two parts on an adopted connection is
#     answered once whole;
#   - hit-and-run clients (send, close at once) never crash the child;
#   - graceful restart: parked requests finish with 200 and
#     "Connection: close", idle adopted connections close at once, the old
#     child exits, the new one serves;
#   - graceful-stop lets parked requests finish; stop ends everything
#     without a crash.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Client qw(:all);
use Time::HiRes qw(sleep time);

plan skip_all => 'build/bench/slowd is not built (make -C bench slowd)'
    unless -x ($ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd');

my $sd = start_slowd();
my $MAP = "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n";

sub access_lines {
    my ($h, $re) = @_;
    return grep { $_ =~ $re } split /\n/, $h->slurp_log($h->access_log);
}

# A request that is answered and leaves an idle adopted connection (the
# 200 ms backend makes sure the request was parked, so the module owns the
# connection afterwards).
sub adopted_idle {
    my ($h) = @_;
    my $s = connect_to($h->port);
    print $s get_req('/s/delay/200/10');
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 5);
    return ($s, $r);
}

# ------------------------------------------------------------------------
# server 1: abort, keep-alive timeout, split head, hit-and-run
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 25, keepalive_timeout => 2,
                            global => "AsyncProxyWorkers 2 8\n", conf => $MAP);
    $h->start;
    my @kids = $h->children;
    is(scalar @kids, 1, 'server 1: one child');

    # --- a client that aborts while parked ---------------------------------
    {
        my $st0 = figures($h->port);
        my $s = connect_to($h->port);
        print $s get_req('/s/delay/3000/10');
        ok(wait_for(sub { (figures($h->port)->{ParkedNow} // 0) >= 1 }, 3),
           'abort: the 3 s request is parked');
        sleep 0.2;
        my $t_close = time;
        close $s;
        my @l;
        ok(wait_for(sub { @l = access_lines($h, qr{"GET /s/delay/3000/10 }) }, 2.5),
           'abort: the request is logged soon after the client left (not after the backend answered)');
        my ($status, $usec) = ($l[0] // '') =~ /" (\d{3}) \S+ (\d+) /;
        is($status, 499, 'abort: logged with status 499 (client closed request)') or diag $l[0];
        cmp_ok($usec // 9e9, '<', 2_500_000, "abort: its logged duration ends at the abort (${\ ($usec // '?')} us)");
        ok(wait_for(sub { my $st = figures($h->port); ($st->{ParkedNow} // -1) == 0
                                                     && ($st->{AdoptedNow} // -1) == 0 }, 3),
           'abort: nothing stays parked or adopted');
        my $st1 = figures($h->port);
        cmp_ok(($st1->{ClientGone} // 0) - ($st0->{ClientGone} // 0), '==', 1,
               'abort: AsyncProxyClientGone grew by 1');
        is($st1->{InFlight}, 0, 'abort: no request left in flight');
        cmp_ok(($st1->{ParksTotal} // 0) - ($st0->{ParksTotal} // 0), '>=', 1, 'abort: it was parked (ParksTotal)');
    }

    # --- keep-alive timeout on an adopted connection -----------------------
    {
        my $st0 = figures($h->port);
        my ($s, $r) = adopted_idle($h);
        is($r && $r->{status}, 200, 'keep-alive timeout: first request answered');
        my $st1 = figures($h->port);
        cmp_ok(($st1->{AdoptedTotal} // 0) - ($st0->{AdoptedTotal} // 0), '==', 1,
               'keep-alive timeout: the connection was adopted');
        my ($data, $closed, $waited) = read_to_eof($s, 6);
        ok($closed, 'keep-alive timeout: the server closes the idle adopted connection');
        is($data, '', '... without sending anything');
        cmp_ok($waited, '>=', 1.5, sprintf('... not before KeepAliveTimeout 2 (%.2f s)', $waited));
        cmp_ok($waited, '<=', 4, sprintf('... and not long after it (%.2f s)', $waited));
        ok(wait_for(sub { (figures($h->port)->{AdoptedNow} // -1) == 0 }, 3),
           'keep-alive timeout: AdoptedNow back to 0');
        cmp_ok((figures($h->port)->{KeepaliveClosed} // 0) - ($st0->{KeepaliveClosed} // 0), '==', 1,
               'keep-alive timeout: counted in KeepaliveClosed');
    }

    # --- a request head in two parts on an adopted connection -------------
    {
        my $st0 = figures($h->port);
        my ($s, $r) = adopted_idle($h);
        is($r && $r->{status}, 200, 'split head: first request answered');
        print $s "GET /s/delay/0/20 HTTP/1.1\r\nHo";
        sleep 1;
        print $s "st: 127.0.0.1\r\n\r\n";
        my $buf = '';
        $r = read_response($s, \$buf, timeout => 5);
        is($r && $r->{status}, 200, 'split head: answered once the head is whole');
        is($r && $r->{body}, pattern_body(20), 'split head: with the whole body');
        print $s get_req('/s/delay/0/7');
        $r = read_response($s, \$buf, timeout => 5);
        is($r && $r->{body}, pattern_body(7), 'split head: the connection goes on with a third request');
        cmp_ok((figures($h->port)->{HeadWaits} // 0) - ($st0->{HeadWaits} // 0), '>=', 1,
               'split head: the partial head was parked until whole (HeadWaits)');
        close $s;
    }

    # --- hit-and-run: send a request to a 1 s backend, close at once ------
    {
        my $st0 = figures($h->port);
        local $SIG{PIPE} = 'IGNORE';
        # Every other client closes right after sending (its request may not
        # get parked at all); the others close once the round is sent, after
        # their requests were parked: the abort then runs on module workers,
        # right after the hand-over (the path that crashed the spike without
        # the gate).
        for my $round (1 .. 3) {
            my @later;
            for my $i (1 .. 300) {
                my $s = eval { connect_to($h->port) } or next;
                print $s get_req('/s/delay/1000/10');
                if ($i % 2) { close $s } else { push @later, $s }
            }
            sleep 0.05 * $round;
            close $_ for @later;
            sleep 0.2;
        }
        my $st;
        ok(wait_for(sub { $st = figures($h->port); ($st->{ParkedNow} // -1) == 0
                                                  && ($st->{AdoptedNow} // -1) == 0 }, 8),
           'hit-and-run: afterwards nothing is parked or adopted')
            or diag explain $st;
        is($st->{StacksInUse}, 0, 'hit-and-run: every coroutine stack was released');
        is($st->{InFlight}, 0, 'hit-and-run: no request left in flight');
        cmp_ok(($st->{ClientGone} // 0) - ($st0->{ClientGone} // 0), '>=', 300,
               'hit-and-run: the departures were noticed (ClientGone grew by '
               . (($st->{ClientGone} // 0) - ($st0->{ClientGone} // 0)) . ')');
        ok(kill(0, $kids[0]) && grep({ $_ == $kids[0] } $h->children),
           "hit-and-run: the child ($kids[0]) is still alive (no crash, no replacement)");
        is($st->{GateBoundHits}, 0, 'hit-and-run: the hand-over gate never hit its bound');
        cmp_ok(($st->{ParksTotal} // 0) - ($st0->{ParksTotal} // 0), '>=', 300,
               'hit-and-run: many of them were parked before their client left ('
               . (($st->{ParksTotal} // 0) - ($st0->{ParksTotal} // 0)) . ' parks)');
        my @logged;
        wait_for(sub { @logged = access_lines($h, qr{"GET /s/delay/1000/10 }); @logged >= 900 }, 3);
        cmp_ok(scalar @logged, '>=', 850, 'hit-and-run: (almost) all 900 requests were logged ('
               . scalar(@logged) . ')');
        my $r = request($h->port, get_req('/s/delay/100/10', Connection => 'close'), timeout => 5);
        is($r && $r->{status}, 200, 'hit-and-run: the server still serves');
        unlike($h->slurp_log, qr/exit signal|Segmentation/, 'hit-and-run: no child died of a signal');
    }

    ok($h->stop, 'server 1 stops');
    is_deeply([$h->error_lines], [], 'server 1: no error-log line at level error or above');
}

# ------------------------------------------------------------------------
# server 2: graceful restart, then graceful stop, with parked requests
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 10, server_limit => 2,
                            global => "AsyncProxyWorkers 2 8\n", conf => $MAP);
    $h->start;
    my ($old) = $h->children;

    my @idle = map { my ($s, $r) = adopted_idle($h); is($r && $r->{status}, 200, "graceful: idle connection $_ set up"); $s } 1 .. 2;
    my @parked = map { my $s = connect_to($h->port); print $s get_req('/s/delay/3000/50'); $s } 1 .. 3;
    ok(wait_for(sub { my $st = figures($h->port); ($st->{ParkedNow} // 0) >= 5 && ($st->{AdoptedNow} // 0) >= 5 }, 3),
       'graceful: 3 requests parked and 2 idle adopted connections');
    my $gens = () = $h->slurp_log =~ /resuming normal operations/g;
    my $t_sig = time;
    kill 'USR1', $h->pid;
    for my $i (0 .. $#idle) {
        my ($data, $closed) = read_to_eof($idle[$i], 3);
        my $after = time - $t_sig;
        ok($closed && $after < 1.5, sprintf('graceful: idle adopted connection %d closed at once (%.2f s)', $i + 1, $after));
        is($data, '', '... with nothing sent');
    }
    for my $i (0 .. $#parked) {
        my $buf = '';
        my $r = read_response($parked[$i], \$buf, timeout => 8);
        is($r && $r->{status}, 200, "graceful: parked request " . ($i + 1) . " completes with 200");
        is($r && $r->{body}, pattern_body(50), '... and its whole body');
        like($r && $r->{headers}{connection} // '', qr/close/i, '... with Connection: close');
        my (undef, $closed) = read_to_eof($parked[$i], 3);
        ok($closed, '... then the connection is closed');
    }
    cmp_ok(time - $t_sig, '>=', 2, 'graceful: the parked requests were not cut short (they waited for the backend)');
    ok(wait_for(sub { !kill 0, $old }, 10), "graceful: the old child ($old) exits");
    ok(wait_for(sub { my $n = () = $h->slurp_log =~ /resuming normal operations/g; $n > $gens }, 10),
       'graceful: a new generation started');
    my @new = $h->children;
    ok(@new && !grep({ $_ == $old } @new), "graceful: a new child runs (@new)");
    my $r = request($h->port, get_req('/s/delay/300/10', Connection => 'close'), timeout => 5);
    is($r && $r->{status}, 200, 'graceful: the new child serves proxied (parked) requests');
    is($r && $r->{body}, pattern_body(10), '... with the whole body');
    is(figures($h->port)->{Mode}, 'async', 'graceful: the new child runs in async mode');

    # graceful stop with parked requests
    @parked = map { my $s = connect_to($h->port); print $s get_req('/s/delay/3000/40'); $s } 1 .. 2;
    ok(wait_for(sub { (figures($h->port)->{ParkedNow} // 0) >= 2 }, 3), 'graceful-stop: 2 requests parked');
    my @kids = $h->children;
    ok($h->graceful_stop(20), 'graceful-stop ends the server');
    for my $i (0 .. $#parked) {
        my $buf = '';
        my $r2 = read_response($parked[$i], \$buf, timeout => 5);
        is($r2 && $r2->{status}, 200, 'graceful-stop: parked request ' . ($i + 1) . ' completed with 200');
        is($r2 && $r2->{body}, pattern_body(40), '... and its whole body');
    }
    ok(!grep({ kill 0, $_ } @kids), 'graceful-stop: no child left');
    is_deeply([$h->error_lines], [], 'server 2: no error-log line at level error or above');
}

# ------------------------------------------------------------------------
# server 3: stop (SIGTERM) with parked requests and idle adopted connections
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 10,
                            global => "AsyncProxyWorkers 2 8\n", conf => $MAP);
    $h->start;
    my @kids = $h->children;
    my @idle = map { my ($s) = adopted_idle($h); $s } 1 .. 2;
    my @parked = map { my $s = connect_to($h->port); print $s get_req('/s/delay/3000/10'); $s } 1 .. 5;
    ok(wait_for(sub { (figures($h->port)->{ParkedNow} // 0) >= 7 }, 3), 'stop: 5 requests parked, 2 idle adopted');
    my $t0 = time;
    ok($h->stop, 'stop (SIGTERM) ends the server');
    my $all_closed = 1;
    for my $s (@idle, @parked) {
        my (undef, $closed) = read_to_eof($s, 3);
        $all_closed &&= $closed;
    }
    ok($all_closed, 'stop: every client connection was closed');
    cmp_ok(time - $t0, '<', 2.5, 'stop: it did not wait for the 3 s backend');
    ok(!grep({ kill 0, $_ } @kids), 'stop: no child left');
    ok(!$h->alive, 'stop: no parent left');
    is_deeply([$h->error_lines], [], 'server 3: no crash, no error-log line at level error or above');
}

stop_slowd($sd);
done_testing;
