#!/usr/bin/perl
# The backend keep-alive pool sizes itself and expires on time (issue 15).
# One child (event MPM), slowd as the backend (it never closes an idle
# connection itself, and its /stats counts the connections it accepted and
# holds open), everything asserted on what slowd saw and on the pool's
# "AsyncProxyPool:" line of the status page:
#   (1) with the defaults (no max=, no ttl=), a burst of $N concurrent
#       requests (3 s each: all of a burst hold a connection at once), then
#       a second burst: the second opens (almost) no connection, every
#       request reuses one the first left in the pool; the fixed 256 of
#       before kept 256 and connected ~$N - 256 afresh;
#   (2) then nothing more is sent to the origin: once ttl (5 s) has passed
#       the proxy closes every idle connection by itself (slowd holds none
#       open, no new request reached it; the pool's line says idle=0 and
#       counts them expired);
#   (3) an explicit max=2 on another mapping still caps its pool: after a
#       burst of $M, slowd holds exactly 2 of its connections open and the
#       line says idle=2 cap=2; after its ttl those go too;
#   (4) with the load gone for two windows (2 x ttl) the default pool's
#       capacity is back at its floor (16).
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

my $N = 400;
my $M = 12;
my $have = raise_fd_limit($N + 300);
plan skip_all => "fd limit $have is too low for $N client sockets" if $have < $N + 100;

my $sd = start_slowd();
my $SP = $sd->{port};
my $h = APX::Httpd->new(
    mpm => 'event', threads => 25, factor => 400, servers => 1, server_limit => 1,
    global => "AsyncProxyWorkers 2 8\nListenBacklog 1024\n",
    conf => "AsyncProxyPass /p/ http://127.0.0.1:$SP/\n"
          . "AsyncProxyPass /two/ http://127.0.0.1:$SP/ max=2 ttl=2s\n",
);
$h->start;
my $HP = $h->port;

# slowd's counters; its own connection is one of "open" and "accepted"
sub slowd_stats {
    my $r = http_request($SP, 'GET', '/stats');
    return {} unless $r && $r->{status} == 200;
    my %s = $r->{body} =~ /^(\w+) (\d+)$/mg;
    return \%s;
}

# the pool line of an origin + max: { idle => , cap => , ... }
sub pool_line {
    my ($max) = @_;
    my $r = http_request($HP, 'GET', '/apx-status');
    return {} unless $r && $r->{status} == 200;
    for my $l (split /\n/, $r->{body}) {
        next unless $l =~ /^AsyncProxyPool: origin=http:\/\/127\.0\.0\.1:$SP max=\Q$max\E /;
        return { $l =~ /(\w+)=(\S+)/g };
    }
    return {};
}

sub burst {
    my ($prefix, $n, $tag) = @_;
    my @conns = map {
        { reqs => ["GET /$prefix/delay/3000/64?$tag-$_ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"] }
    } 1 .. $n;
    my $ok = multiplex(port => $HP, conns => \@conns, timeout => 60);
    my $good = grep { !$_->{error} && @{ $_->{resps} } == 1 && $_->{resps}[0]{status} == 200 } @conns;
    is($good, $n, "$tag: $n concurrent requests, all 200");
    return $ok;
}

# ---- (1) the second burst reuses what the first opened --------------------
my $s0 = slowd_stats();
burst('p', $N, 'burst1');
my $s1 = slowd_stats();
my $opened1 = $s1->{accepted} - $s0->{accepted} - 1;
# (a 3 s backend: on any box the burst's requests overlap, so nearly
# every request needs a connection of its own)
cmp_ok($opened1, '>', $N / 2, "burst 1 opened a backend connection for most requests ($opened1)");
my $p1 = pool_line('auto');
is($p1->{idle}, $opened1, "after burst 1 the pool holds every one idle (idle=" . ($p1->{idle} // '?')
   . " cap=" . ($p1->{cap} // '?') . ")") or diag explain $p1;

burst('p', $N, 'burst2');
my $s2 = slowd_stats();
my $opened2 = $s2->{accepted} - $s1->{accepted} - 1;
cmp_ok($opened2, '<', $N / 10, "burst 2 reused them: $opened2 new backend connections for $N requests");
my $p2 = pool_line('auto');
is($p2->{connects}, $opened1 + $opened2, "connects= is what slowd accepted ($p2->{connects})") or diag explain $p2;
is($p2->{reuses}, 2 * $N - $p2->{connects}, "reuses= counts every other request (reuses=" . ($p2->{reuses} // '?') . ")");
cmp_ok($p2->{idle_peak} // 0, '>=', $p1->{idle}, "idle_peak= saw the burst ($p2->{idle_peak})");

# ---- (2) idle connections go by the timer, with no new request -------------
my $t_idle = time;
my $open_left = wait_for(sub { my $s = slowd_stats(); ($s->{open} // 99) - 1 == 0 ? 'zero' : '' }, 5 + 20);
my $s3 = slowd_stats();
is($open_left, 'zero', sprintf("after ttl the proxy closed every idle connection by itself (%.1f s)", time - $t_idle));
is($s3->{delay}, $s2->{delay}, "no request reached the origin meanwhile");
my $p3 = pool_line('auto');
is($p3->{idle}, 0, "the pool line says idle=0");
is(($p3->{expired} // 0) - ($p2->{expired} // 0), $p2->{idle},
   "and counts them expired by the timer (expired=" . ($p3->{expired} // '?') . ", idle before: $p2->{idle})");

# ---- (3) an explicit max= still caps the pool -------------------------------
my $before = slowd_stats();
burst('two', $M, 'max2');
my $after = slowd_stats();
cmp_ok($after->{accepted} - $before->{accepted} - 1, '>=', $M - 2, "max=2: the burst opened its own connections");
# the last release closes what exceeds max= at once; allow the releases
# to finish
my $two_open = wait_for(sub { my $s = slowd_stats(); ($s->{open} // 99) - 1 <= 2 ? $s->{open} - 1 : '' }, 10);
is($two_open, 2, "max=2: slowd holds exactly 2 idle connections open after the burst of $M");
my $pm = pool_line(2);
is($pm->{idle}, 2, "max=2: the pool line says idle=2");
is($pm->{cap}, 2, "max=2: cap=2");
my $gone = wait_for(sub { my $s = slowd_stats(); ($s->{open} // 99) - 1 == 0 ? 'zero' : '' }, 2 + 15);
is($gone, 'zero', "max=2 ttl=2s: those go after their ttl too");

# ---- (4) the capacity follows the demand down -------------------------------
# two demand windows (2 x ttl) after the bursts the recent peak is 0: the
# capacity is back at the floor (16)
my $capnow = wait_for(sub { my $p = pool_line('auto'); ($p->{cap} // 0) == 16 ? 16 : '' }, 10 + 15);
is($capnow, 16, "once the bursts are two windows old the capacity is back at the floor")
    or diag explain pool_line('auto');

is_deeply([$h->error_lines], [], "no error in the log");
$h->stop;
stop_slowd($sd);
done_testing;
