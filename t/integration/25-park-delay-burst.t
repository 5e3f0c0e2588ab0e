#!/usr/bin/perl
# The park delay:
#   - by default (5 ms) a first request whose backend answers within it is
#     served on the MPM thread, not parked; one whose backend takes 300 ms
#     is parked;
#   - a burst of first requests to a slow backend does not hold every MPM
#     thread for the whole AsyncProxyParkDelay: at most half of
#     ThreadsPerChild wait it out, the others park at once (figure
#     ParkDelaySkipped) and stay free to accept. With 4 MPM threads and a
#     park delay of 800 ms, 6 requests sent at once to a 1.5 s backend: 2
#     threads wait, the 4 other requests are parked at once; all 6 are
#     answered whole.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Load qw(:all);

plan skip_all => 'build/bench/slowd is not built (make -C bench slowd)'
    unless -x ($ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd');

my $sd = start_slowd();

# the default park delay
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 4, factor => 100, servers => 1,
                            server_limit => 1,
                            conf => "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n");
    $h->start;
    my $st0 = status($h->port);
    my $r = request($h->port, get_req('/s/delay/0/10'), 10);
    is($r && $r->{status}, 200, 'default delay: a 0 ms backend answers');
    my $st1 = status($h->port);
    is(($st1->{ParkedTotal} // 0) - ($st0->{ParkedTotal} // 0), 0,
       'default delay: its request was not parked (answered within the 5 ms park delay)');
    $r = request($h->port, get_req('/s/delay/300/10'), 10);
    is($r && $r->{status}, 200, 'default delay: a 300 ms backend answers');
    my $st2 = status($h->port);
    is(($st2->{ParkedTotal} // 0) - ($st1->{ParkedTotal} // 0), 1, 'default delay: that one was parked');
    ok($h->stop, 'server stops');
    is_deeply([$h->error_lines], [], 'no error-log line at level error or above');
}

my $h = APX::Httpd->new(
    mpm => 'event', threads => 4, factor => 100, servers => 1, server_limit => 1,
    global => "AsyncProxyWorkers 2 4\nAsyncProxyParkDelay 800ms\n",
    conf => "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n",
);
$h->start;

my $st0 = status($h->port);
ok(defined $st0->{ParkDelaySkipped}, 'the status page has ParkDelaySkipped')
    or diag explain $st0;

my @c;
for my $i (1 .. 6) {
    my $s = client($h->port);
    print $s get_req("/s/delay/1500/10?i=$i");
    push @c, $s;
}
my $ok = 0;
for my $s (@c) {
    my $buf = '';
    my $r = read_response($s, \$buf, 15);
    $ok++ if $r && $r->{status} == 200 && length($r->{body}) == 10;
}
is($ok, 6, 'all 6 requests answered 200 with their whole body');

my $st1 = status($h->port);
is(($st1->{ParkDelaySkipped} // 0) - ($st0->{ParkDelaySkipped} // 0), 4,
   '2 of the 4 MPM threads waited out the park delay; the 4 other requests parked at once');
cmp_ok(($st1->{ParksTotal} // 0) - ($st0->{ParksTotal} // 0), '>=', 6, 'every request was parked');

close $_ for @c;
ok($h->stop, 'server stops');
stop_slowd($sd);
is_deeply([$h->error_lines], [], 'no error-log line at level error or above, no crash');
done_testing;
