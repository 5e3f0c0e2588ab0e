#!/usr/bin/perl
# Scale under the event MPM: 2,000 concurrent requests to a 1 s backend
# through ONE child with 25 MPM threads. They must all be answered (200,
# whole body) because they are parked in the module's poller instead of
# holding threads: the status page shows far more parked requests than
# there are threads, the child's thread count never grows past the MPM's
# threads plus the engine's, and afterwards every figure and the child's fd
# count come back down (nothing leaks). A second round on the same 2,000
# connections exercises keep-alive on adopted connections (module workers
# run those requests and park them again themselves).
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

my $N = 2000;
# 2,000 client sockets need about 2,000 fds in this process too.
my $fdlimit = raise_fd_limit(8192);
plan skip_all => "fd limit $fdlimit is too low for $N client sockets" if $fdlimit < $N + 200;

# ---------------------------------------------------------------- the test
my $sd = start_slowd();
my $BODY = 100;
my $h = APX::Httpd->new(
    mpm => 'event', threads => 25, factor => 400, servers => 1, server_limit => 1,
    global => "AsyncProxyWorkers 2 8\nListenBacklog 4096\n",
    # at most 16 idle backend connections stay pooled: the fd count must
    # come back to its baseline plus that
    conf => "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/ max=16\n",
);
$h->start;
my @kids = $h->children;
is(scalar @kids, 1, 'one child');
my $child = $kids[0];

{
    my $r = request($h->port, get_req("/s/delay/0/$BODY", Connection => 'close'));
    is($r && $r->{status}, 200, 'warm-up request is proxied');
}
sleep 0.3;
my $fd_base = $h->fds_of($child);
my $thr_base = $h->threads_of($child);
my $st0 = figures($h->port);
ok(defined $st0->{ParkedNow}, 'status page answers with ParkedNow') or diag explain $st0;
diag "child $child: $fd_base fds, $thr_base threads before the load";

my $MAX_THREADS = 25 + 1 + 1 + 1 + 8;   # MPM + listener + main + poller + workers max
my ($max_parked, $max_threads, $max_adopted, $max_preq, $samples) = (0, 0, 0, 0, 0);
my $sampler = sub {
    my $t = $h->threads_of($child);
    $max_threads = $t if $t > $max_threads;
    my $st = figures($h->port);
    $samples++;
    $max_parked = $st->{ParkedNow} if ($st->{ParkedNow} // 0) > $max_parked;
    $max_adopted = $st->{AdoptedNow} if ($st->{AdoptedNow} // 0) > $max_adopted;
    $max_preq = $st->{ParkedRequests} if ($st->{ParkedRequests} // 0) > $max_preq;
};

my @conns = map { { reqs => [get_req("/s/delay/1000/$BODY")] } } 1 .. $N;
my $t0 = time;
multiplex(port => $h->port, conns => \@conns, keep_open => 1, timeout => 60,
          tick => $sampler, tick_every => 0.2);
my $took = time - $t0;
$sampler->();
my $want = pattern_body($BODY);
my @good = grep { !$_->{error} && @{ $_->{resps} } == 1 && $_->{resps}[0]{status} == 200
                  && $_->{resps}[0]{body} eq $want } @conns;
is(scalar @good, $N, "round 1: all $N concurrent requests answered 200 with the whole body");
if (@good != $N) {
    my %why;
    $why{ $_->{error} // ($_->{resps}[0] ? "status $_->{resps}[0]{status}" : 'none') }++
        for grep { my $c = $_; !grep { $_ == $c } @good } @conns;
    diag explain \%why;
}
# 2000 x 1 s on 25 + 8 threads would take over 60 s if each held a thread.
cmp_ok($took, '<', 20, sprintf('round 1 was not serialised on threads (%.1f s)', $took));
cmp_ok($max_parked, '>=', 500, "the requests were parked in the module (ParkedNow peaked at $max_parked, "
       . "25 MPM threads) [$samples samples]");
cmp_ok($max_preq, '>=', 500, "... as requests in flight (ParkedRequests peaked at $max_preq)");
cmp_ok($max_threads, '<=', $MAX_THREADS, "the child never had more than $MAX_THREADS threads ($max_threads)");
is_deeply([$h->children], [$child], 'still the same single child');

my $st1 = figures($h->port);
is($st1->{AdoptedNow}, $N, "after round 1 the module holds the $N keep-alive connections (AdoptedNow)");

# Round 2: the same connections, now adopted: keep-alive requests run on
# module workers and are parked again by them.
($max_parked, $max_threads) = (0, 0);
$_->{reqs} = [get_req("/s/delay/1000/$BODY")] for grep { $_->{sock} } @conns;
my @open = grep { $_->{sock} } @conns;
is(scalar @open, $N, 'every connection is still open for round 2');
$t0 = time;
multiplex(port => $h->port, conns => \@open, keep_open => 1, timeout => 60,
          tick => $sampler, tick_every => 0.2);
$took = time - $t0;
my @good2 = grep { !$_->{error} && @{ $_->{resps} } == 1 && $_->{resps}[0]{status} == 200
                   && $_->{resps}[0]{body} eq $want } @open;
is(scalar @good2, $N, "round 2 (keep-alive on adopted connections): all $N answered 200 with the whole body");
cmp_ok($took, '<', 20, sprintf('round 2 was not serialised either (%.1f s)', $took));
cmp_ok($max_parked, '>=', 500, "round 2 parked them again (ParkedNow peaked at $max_parked)");
cmp_ok($max_threads, '<=', $MAX_THREADS, "round 2: at most $MAX_THREADS threads ($max_threads)");
my $st2 = figures($h->port);
cmp_ok($st2->{AdoptedTotal} // 0, '>=', $N, "AdoptedTotal counts the $N adopted connections");
cmp_ok(($st2->{ParksTotal} // 0) - ($st0->{ParksTotal} // 0), '>=', 2 * $N,
       'ParksTotal grew by at least two parks per connection');

# Close every client: the module closes its side, and its figures and the
# child's fd count come back to their idle values.
for my $c (@conns) { close $c->{sock} if $c->{sock}; delete $c->{sock} }
my $st;
ok(wait_for(sub { $st = figures($h->port); ($st->{AdoptedNow} // -1) == 0 && ($st->{ParkedNow} // -1) == 0 }, 15),
   'after the clients closed: AdoptedNow and ParkedNow are back to 0')
    or diag "AdoptedNow $st->{AdoptedNow} ParkedNow $st->{ParkedNow}";
is($st->{QueuedNow} // -1, 0, 'nothing left on the worker queue');
is($st->{InFlight} // -1, 0, 'no proxied request in flight (InFlight)');
is($st->{ParkedRequests} // -1, 0, 'no parked request counted against AsyncProxyMaxParked (ParkedRequests)');
is($st->{StacksInUse} // -1, 0, 'no coroutine stack in use');
my $fds;
ok(wait_for(sub { $fds = $h->fds_of($child); $fds <= $fd_base + 16 + 4 }, 10),
   "the child's fd count returns near its baseline ($fds now, $fd_base before, <= 16 pooled backend connections allowed)");
is_deeply([$h->children], [$child], 'the same child served everything');

# The access log has every proxied request with its real status.
my @lines = grep { m{"GET /s/delay/1000/$BODY HTTP/1\.1" } } split /\n/, $h->slurp_log($h->access_log);
is(scalar(grep { / 200 $BODY / } @lines), 2 * $N, "access log: all " . 2 * $N . " requests logged as 200 with $BODY bytes")
    or diag scalar(@lines) . " lines, e.g. $lines[0]";

ok($h->stop, 'server stops');
stop_slowd($sd);
# AH00484 is the parent's one-time note that every MPM thread was busy at
# some instant: 2,000 connections opened at once each run their first
# request on an MPM thread, and on a loaded 2-core machine they can all be
# busy for a moment (seen with the suite and bench-engine running side by
# side). It is logged once per server and says nothing of parked requests;
# anything else at error level fails.
is_deeply([$h->error_lines(qr/AH00484/)], [], 'no error-log line at level error or above, no crash');
done_testing;
