#!/usr/bin/perl
# The park delay:
#   - by default (0) a request whose answer is not there at once (a 2 ms
#     backend) is parked; with parkdelay=5ms the same request is served on
#     the MPM thread, not parked, and one whose backend takes 300 ms is;
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
use APX::Client qw(:all);

plan skip_all => 'build/bench/slowd is not built (make -C bench slowd)'
    unless -x ($ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd');

my $sd = start_slowd();

# the default park delay, and parkdelay=
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 4, factor => 100, servers => 1,
                            server_limit => 1,
                            conf => "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n"
                                  . "AsyncProxyPass /f/ http://127.0.0.1:$sd->{port}/ parkdelay=5ms\n");
    $h->start;
    my $parked = sub {      # ParkedTotal grew by how much over one request
        my ($path) = @_;
        my $st0 = figures($h->port);
        my $r = request($h->port, get_req($path), timeout => 10);
        my $st1 = figures($h->port);
        return ($r && $r->{status}, ($st1->{ParkedTotal} // 0) - ($st0->{ParkedTotal} // 0));
    };
    is_deeply([$parked->('/s/delay/2/10')], [200, 1], 'default (0): a 2 ms backend\'s request is parked');
    is_deeply([$parked->('/f/delay/2/10')], [200, 0],
              'parkdelay=5ms: a 2 ms backend\'s request is answered on the MPM thread, not parked');
    is_deeply([$parked->('/f/delay/300/10')], [200, 1], 'parkdelay=5ms: a 300 ms backend\'s request is parked');
    ok($h->stop, 'server stops');
    is_deeply([$h->error_lines], [], 'no error-log line at level error or above');
}

my $h = APX::Httpd->new(
    mpm => 'event', threads => 4, factor => 100, servers => 1, server_limit => 1,
    global => "AsyncProxyWorkers 2 4\nAsyncProxyParkDelay 800ms\n",
    conf => "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n",
);
$h->start;

my $st0 = figures($h->port);
ok(defined $st0->{ParkDelaySkipped}, 'the status page has ParkDelaySkipped')
    or diag explain $st0;

my @c;
for my $i (1 .. 6) {
    my $s = connect_to($h->port);
    print $s get_req("/s/delay/1500/10?i=$i");
    push @c, $s;
}
my $ok = 0;
for my $s (@c) {
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 15);
    $ok++ if $r && $r->{status} == 200 && length($r->{body}) == 10;
}
is($ok, 6, 'all 6 requests answered 200 with their whole body');

my $st1 = figures($h->port);
is(($st1->{ParkDelaySkipped} // 0) - ($st0->{ParkDelaySkipped} // 0), 4,
   '2 of the 4 MPM threads waited out the park delay; the 4 other requests parked at once');
cmp_ok(($st1->{ParksTotal} // 0) - ($st0->{ParksTotal} // 0), '>=', 6, 'every request was parked');

close $_ for @c;
ok($h->stop, 'server stops');
stop_slowd($sd);
is_deeply([$h->error_lines], [], 'no error-log line at level error or above, no crash');
done_testing;
