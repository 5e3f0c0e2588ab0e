#!/usr/bin/perl
# Out of file descriptors: a child started with `ulimit -n 256` holds 140
# keep-alive client connections, then all 140 send a request for a 2 s
# backend at once. Each proxied request needs a second fd (the backend
# socket), so about a third of them cannot have one: those must be answered
# 503 with Retry-After (the module maps EMFILE/ENFILE on the backend socket
# to 503, APX00102), the others 200 with the whole body, nothing else. The
# child must not crash (same pid, no "exit signal" or core), and once the
# load is gone its fds come back down and normal requests succeed again.
#
# Why the clients connect first (with a static request) and send the slow
# requests on open connections: no connection may be waiting to be
# accepted while the child is out of fds. The event MPM's listener treats
# EMFILE on accept() as a resource shortage (AH02179) and retires the child;
# with every child out of fds at once the parent then gives up and exits
# (AH02324, "resource shortage ... httpd is exiting"). That is httpd's own
# behaviour, the same without this module (reproduced while writing this
# test; bench/PROFILE.md), so the test keeps the accept side out of it and
# checks what the module decides.
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

my $N = 140;
my $NOFILE = 256;
my $fdlimit = raise_fd_limit(4096);
plan skip_all => "fd limit $fdlimit is too low for $N client sockets" if $fdlimit < $N + 100;

my $sd = start_slowd();
my $BODY = 100;
my $h = APX::Httpd->new(
    # more MPM threads than connections: the burst of 140 requests never
    # finds them all busy, which would make the MPM close idle keep-alive
    # connections (and the clients see EOF, not an answer)
    mpm => 'event', threads => 160, factor => 400, servers => 1, server_limit => 1,
    keepalive_timeout => 30,
    nofile => $NOFILE,
    global => "AsyncProxyWorkers 2 8\nListenBacklog 1024\nAsyncProxyRetryAfter 7\n",
    # no idle backend connection is kept: every request opens its own
    # parkdelay=0: MPM threads never wait in place, so they stay idle and
    # the MPM never closes the idle keep-alive connections for want of one
    conf => "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/ max=0 parkdelay=0\n",
);
$h->start;
my @kids = $h->children;
is(scalar @kids, 1, 'one child');
my $child = $kids[0];
{
    open my $fh, '<', "/proc/$child/limits";
    my ($soft) = join('', <$fh>) =~ /^Max open files\s+(\d+)/m;
    is($soft, $NOFILE, "the child runs with an open-files limit of $NOFILE");
}
{
    my $r = request($h->port, get_req("/s/delay/0/$BODY", Connection => 'close'));
    is($r && $r->{status}, 200, 'a request is proxied before the load');
}
sleep 0.3;
my $fd_base = $h->fds_of($child);
diag "child $child: $fd_base fds before the load, limit $NOFILE";

my $want = pattern_body($BODY);
$h->write_file('htdocs/static.txt', "static\n");
my @conns = map { { reqs => [get_req('/static.txt')] } } 1 .. $N;
is(multiplex(port => $h->port, conns => \@conns, keep_open => 1, timeout => 20), $N,
   "$N keep-alive connections are open (one static request each)");
my $fd_open = $h->fds_of($child);
diag "$fd_open fds with the $N connections open";
cmp_ok($fd_open + $N, '>', $NOFILE, "$N more backend sockets would not fit in $NOFILE fds");

$_->{reqs} = [get_req("/s/delay/2000/$BODY", Connection => 'close')] for @conns;
my $max_fds = 0;
my $t0 = time;
multiplex(port => $h->port, conns => \@conns, timeout => 40,
          tick => sub { my $n = $h->fds_of($child); $max_fds = $n if $n > $max_fds },
          tick_every => 0.1);
my $took = time - $t0;

my (%by, @other);
for my $c (@conns) {
    my $r = $c->{resps}[0];
    if ($c->{error} || !$r) {
        push @other, 'client: ' . ($c->{error} // 'no response');
    }
    elsif ($r->{status} == 200 && $r->{body} eq $want) {
        $by{ok}++;
    }
    elsif ($r->{status} == 503) {
        $by{503}++;
        $by{retry_after}++ if ($r->{headers}{'retry-after'} // '') eq '7';
    }
    else {
        push @other, "status $r->{status}" . ($r->{status} == 200 ? ' (body cut)' : '');
    }
}
diag sprintf('%d x 200, %d x 503 in %.1f s; the child peaked at %d fds',
             $by{ok} // 0, $by{503} // 0, $took, $max_fds);
is(scalar @other, 0, 'every request got 200 with the whole body or 503: nothing else')
    or do { my %n; $n{$_}++ for @other; diag explain \%n };
cmp_ok($by{503} // 0, '>', 0, 'the backend sockets ran out: some requests got 503');
is($by{retry_after} // 0, $by{503} // 0, 'every 503 carries the configured Retry-After: 7');
# every fd that was left went to a backend socket (more were freed as
# refused clients closed theirs): no 503 while the child had fds to spare
my $free = $NOFILE - $fd_open;
cmp_ok($by{ok} // 0, '>=', $free - 8,
       "the 200s used at least the $free fds that were left ($by{ok}; peak seen $max_fds of $NOFILE)");
cmp_ok($took, '<', 30, sprintf('the load ended in bounded time (%.1f s)', $took));

# no crash: the same child, alive
is_deeply([$h->children], [$child], 'the same child is still serving (no crash, no replacement)');

# recovery: with the load gone, fds come back and requests succeed
my $st;
ok(wait_for(sub { $st = figures($h->port); ($st->{InFlight} // -1) == 0 && ($st->{ParkedNow} // -1) == 0 }, 15),
   'afterwards nothing is in flight or parked')
    or diag explain $st;
cmp_ok($st->{Unavailable} // 0, '>=', $by{503} // 0, "the status page counts the 503s (Unavailable $st->{Unavailable})");
my $fds;
ok(wait_for(sub { $fds = $h->fds_of($child); $fds <= $fd_base + 4 }, 15),
   "the child's fd count returns to its baseline ($fds now, $fd_base before)");
my @after = map { request($h->port, get_req("/s/delay/50/$BODY", Connection => 'close'), timeout => 10) } 1 .. 5;
is(scalar(grep { $_ && $_->{status} == 200 && $_->{body} eq $want } @after), 5,
   'five requests after the load are proxied normally (recovered)');
{
    my @c2 = map { { reqs => [get_req("/s/delay/500/$BODY", Connection => 'close')] } } 1 .. 50;
    my $good = multiplex(port => $h->port, conns => \@c2, timeout => 20);
    is($good, 50, '50 concurrent requests (within the fd budget) all succeed after the exhaustion');
}
is_deeply([$h->children], [$child], 'still the same child');

ok($h->stop, 'server stops');
stop_slowd($sd);
my $log = $h->slurp_log;
like($log, qr/APX00102: .*out of file descriptors/, 'the error log names the cause (APX00102)');
unlike($log, qr/AH02179|AH00093|apr_socket_accept/, 'the listener itself never ran out (no AH02179)');
is_deeply([$h->error_lines(qr/APX00102: /)], [],
          'no other error-log line at level error or above, no crash, no core');
done_testing;
