#!/usr/bin/perl
# bench/balancer.pl: the balancer rows of issue 13, every system in the same
# run, loopback only, bounded in time, stopping what it started (by pid).
#
# (a) skew: 4 members (slowd), one of them 10x slower (slowd -m 10); wrk
#     with C connections for D seconds on /delay/MS/1024: req/s, p50, p99,
#     and the share of requests the slow member answered. Systems:
#     mod_asyncproxy lbmethod=p2c-ewma (the default) and wrr;
#     mod_proxy_balancer byrequests and bybusyness; nginx least_conn and
#     random two least_conn.
# (b) cost: a fast backend (delay 0), 64 connections: CPU per request of
#     the whole server through a 4-member group vs a single origin, the two
#     alternated ROUNDS times (the difference is the balancer's cost).
#
#   bench/balancer.pl [--quick] [--conns C] [--duration D] [--delay MS]
#                     [--rounds N] [--systems RE] [--out DIR]
#
# Writes results/balancer-latest.md (and a dated copy); raw output stays in
# a temporary directory.
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use Getopt::Long;
use IO::Socket::INET;
use POSIX qw(strftime WNOHANG);
use Time::HiRes qw(time sleep);
my $NOFILE = 20000;
use lib dirname(abs_path($0)) . '/lib';
use APX::Bench qw(raise_nofile children_of tree spawn stop_pid stop_all slurp spew fill free_port wait_port $BENCH $TOP $BIN $APACHE $NGINX $MODULE_SO);
raise_nofile($NOFILE, @ARGV);

my %opt = (systems => '', quick => 0);
GetOptions(\%opt, 'quick!', 'conns=i', 'duration=i', 'delay=i', 'rounds=i', 'systems=s', 'out=s')
    or die "usage: $0 [--quick] [--conns C] [--duration D] [--delay MS] [--rounds N] [--systems RE] [--out DIR]\n";
$opt{quick} = 1 if ($ENV{QUICK} // '') =~ /^(1|yes|true)$/i;
$opt{conns} //= 200;
$opt{duration} //= $opt{quick} ? 6 : 15;
$opt{delay} //= 20;
$opt{rounds} //= $opt{quick} ? 1 : 3;

my $OUT = $opt{out} // "$BENCH/results";
my $SLOWD = "$BIN/slowd";
my $MODDIR = '/usr/lib/apache2/modules';
my $ROOT = $> == 0;
my $CLK_TCK = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
-x $SLOWD or die "$SLOWD missing: make -C bench slowd\n";
-f $MODULE_SO or die "$MODULE_SO missing: make\n";

# utime + stime of a process tree, in seconds
sub cpu_s {
    my $t = 0;
    for my $p (@_) {
        my @f = split ' ', (slurp("/proc/$p/stat") =~ /\)\s(.*)$/s ? $1 : '');
        $t += ($f[11] // 0) + ($f[12] // 0) if @f;
    }
    return $t / $CLK_TCK;
}

my $TMP = tempdir('apx-balancer-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $TMP;

sub start_slowd {
    my ($mult) = @_;
    my $port = free_port();
    my $pid = spawn("$TMP/slowd-$port.out", $SLOWD, '-q', '-p', $port, '-m', $mult);
    wait_port($port, 10) or die "slowd did not start\n";
    return { pid => $pid, port => $port };
}

sub start_httpd {
    my ($name, $threads, $body) = @_;
    my $dir = "$TMP/$name";
    make_path("$dir/logs", "$dir/htdocs");
    chmod 0755, $dir;
    my $port = free_port();
    my %v = (DIR => $dir, PORT => $port, MPM => 'event', SERVERS => 1, THREADS => $threads,
             MAXWORKERS => $threads, USER => $ROOT ? "User www-data\nGroup www-data" : '', BUCKETS => '');
    spew("$dir/httpd.conf", fill(slurp("$BENCH/conf/httpd-base.conf.in"), %v) . "\n$body\n");
    system('chown', 'www-data', "$dir/logs") if $ROOT;
    my $out = `$APACHE -f $dir/httpd.conf -k start 2>&1`;
    die "apache2 -k start ($name) failed: $out" if $?;
    my ($pid, $end) = (undef, time + 10);
    while (time < $end) { ($pid) = slurp("$dir/logs/httpd.pid") =~ /(\d+)/; last if $pid; sleep 0.05 }
    die "httpd ($name): no pid\n" . slurp("$dir/logs/error_log") unless $pid;
    $APX::Bench::LIVE{$pid} = 1;
    wait_port($port, 10) or die "httpd ($name) not answering\n" . slurp("$dir/logs/error_log");
    sleep 0.3;
    return { pid => $pid, port => $port, dir => $dir };
}

sub start_nginx {
    my ($name, $upstream) = @_;
    my $dir = "$TMP/$name";
    make_path("$dir/logs", "$dir/tmp");
    chmod 0755, $dir;
    my $port = free_port();
    my $user = $ROOT ? 'user www-data;' : '';
    spew("$dir/nginx.conf", <<"EOF");
worker_processes 1;
worker_rlimit_nofile 20000;
$user
pid $dir/logs/nginx.pid;
error_log $dir/logs/error_log warn;
daemon off;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/cb; proxy_temp_path $dir/tmp/p;
    fastcgi_temp_path $dir/tmp/f; uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;
    keepalive_requests 1000000;
    upstream backend {
$upstream
        keepalive 1000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location /b/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    my $pid = spawn("$dir/nginx.out", $NGINX, '-c', "$dir/nginx.conf", '-p', "$dir/", '-e', "$dir/logs/error_log");
    wait_port($port, 10) or die "nginx ($name) not answering\n" . slurp("$dir/nginx.out");
    sleep 0.3;
    return { pid => $pid, port => $port, dir => $dir };
}

sub wrk {
    my ($port, $path, $conns, $secs, $tag) = @_;
    my $out = "$TMP/wrk-$tag.out";
    system("wrk -t2 -c$conns -d${secs}s --timeout 10s -s $BENCH/conf/report.lua "
         . "http://127.0.0.1:$port$path > $out 2>&1");
    my $c = slurp($out);
    my %r = $c =~ /^APXBENCH (.*)$/m ? (map { split /=/, $_, 2 } split ' ', $1) : ();
    die "wrk: no summary\n$c" unless %r;
    my %pct = $c =~ /^APXPCT (\S+) (\d+)$/mg;
    $r{pct} = \%pct;
    $r{errors} = $r{connect} + $r{read} + $r{write} + $r{status} + $r{timeout};
    return \%r;
}

sub slowd_count {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or return 0;
    print $s "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    local $/; my $r = <$s> // '';
    return $r =~ /^delay (\d+)$/m ? $1 : 0;
}

my @members = map { start_slowd($_ == 3 ? 10 : 1) } 0 .. 3;
my $MEMBERS_AP = join '', map { "    AsyncProxyMember http://127.0.0.1:$_->{port}\n" } @members;
my $MEMBERS_MP = join '', map { "    BalancerMember http://127.0.0.1:$_->{port}\n" } @members;
my $MEMBERS_NG = join '', map { "        server 127.0.0.1:$_->{port};\n" } @members;
my $AP_BASE = "LoadModule asyncproxy_module $MODULE_SO\nAsyncProxyTimeout 60\n";
my $MP_BASE = join '', map { "LoadModule ${_}_module $MODDIR/mod_$_.so\n" }
    qw(proxy proxy_http proxy_balancer slotmem_shm lbmethod_byrequests lbmethod_bybusyness);
my $MP_THREADS = 250;
my @SYSTEMS = (
    { id => 'asyncproxy p2c-ewma', what => 'mod_asyncproxy, lbmethod=p2c-ewma (default), 1 child x 25 threads',
      start => sub { start_httpd('ap-p2c', 25, "$AP_BASE<AsyncProxyBalancer g>\n$MEMBERS_AP</AsyncProxyBalancer>\nAsyncProxyPass /b/ balancer://g/\n") } },
    { id => 'asyncproxy wrr', what => 'mod_asyncproxy, lbmethod=wrr, 1 child x 25 threads',
      start => sub { start_httpd('ap-wrr', 25, "$AP_BASE<AsyncProxyBalancer g>\n$MEMBERS_AP    AsyncProxyBalancerSet lbmethod=wrr\n</AsyncProxyBalancer>\nAsyncProxyPass /b/ balancer://g/\n") } },
    { id => 'proxy_balancer byrequests', what => "mod_proxy_balancer lbmethod=byrequests, 1 child x $MP_THREADS threads",
      start => sub { start_httpd('mp-req', $MP_THREADS, "$MP_BASE<Proxy balancer://g>\n$MEMBERS_MP    ProxySet lbmethod=byrequests\n</Proxy>\nProxyPass /b/ balancer://g/\n") } },
    { id => 'proxy_balancer bybusyness', what => "mod_proxy_balancer lbmethod=bybusyness, 1 child x $MP_THREADS threads",
      start => sub { start_httpd('mp-busy', $MP_THREADS, "$MP_BASE<Proxy balancer://g>\n$MEMBERS_MP    ProxySet lbmethod=bybusyness\n</Proxy>\nProxyPass /b/ balancer://g/\n") } },
    { id => 'nginx least_conn', what => 'nginx 1 worker, least_conn',
      start => sub { start_nginx('ng-lc', "        least_conn;\n$MEMBERS_NG") } },
    { id => 'nginx random two least_conn', what => 'nginx 1 worker, random two least_conn',
      start => sub { start_nginx('ng-r2', "        random two least_conn;\n$MEMBERS_NG") } },
);

my $path = "/b/delay/$opt{delay}/1024";
my @rows;
for my $sys (@SYSTEMS) {
    next if $opt{systems} ne '' && $sys->{id} !~ /$opt{systems}/;
    my $srv = $sys->{start}->();
    (my $tag = $sys->{id}) =~ s/\W+/-/g;
    wrk($srv->{port}, $path, $opt{conns}, 2, "$tag-warm");
    my @before = map { slowd_count($_->{port}) } @members;
    my $r = wrk($srv->{port}, $path, $opt{conns}, $opt{duration}, $tag);
    my @after = map { slowd_count($_->{port}) } @members;
    my @n = map { $after[$_] - $before[$_] } 0 .. 3;
    my $tot = 0; $tot += $_ for @n;
    push @rows, { %$sys, r => $r, slow_share => $tot ? $n[3] / $tot : 0 };
    stop_pid($srv->{pid});
    printf "%-28s %8.0f req/s  p50 %7.1f ms  p99 %7.1f ms  slow member %4.1f%%  errors %d\n",
        $sys->{id}, $r->{requests} / ($r->{duration_us} / 1e6), ($r->{pct}{50} // 0) / 1000,
        ($r->{pct}{99} // 0) / 1000, 100 * $rows[-1]{slow_share}, $r->{errors};
}

# (b) CPU per request: a 4-member group (all fast) vs one origin
my @cost;
if ($opt{systems} eq '' || 'cost' =~ /$opt{systems}/) {
    my $m0 = $members[0]{port};
    # the group: the three fast members and a fourth fast slowd
    my $extra = start_slowd(1);
    my $fast4 = join '', map { "    AsyncProxyMember http://127.0.0.1:$_->{port}\n" } @members[0 .. 2], $extra;
    my %conf = (single => "${AP_BASE}AsyncProxyPass /b/ http://127.0.0.1:$m0/\n",
                group => "$AP_BASE<AsyncProxyBalancer g>\n$fast4</AsyncProxyBalancer>\nAsyncProxyPass /b/ balancer://g/\n");
    my %acc;
    for my $round (1 .. $opt{rounds}) {
        for my $kind (qw(single group)) {
            my $srv = start_httpd("cost-$kind-$round", 25, $conf{$kind});
            wrk($srv->{port}, '/b/delay/0/1024', 64, 2, "cost-$kind-$round-warm");
            my @pids = tree($srv->{pid});
            my $c0 = cpu_s(@pids);
            my $r = wrk($srv->{port}, '/b/delay/0/1024', 64, $opt{duration}, "cost-$kind-$round");
            my $c1 = cpu_s(tree($srv->{pid}));
            stop_pid($srv->{pid});
            my $us = $r->{requests} ? 1e6 * ($c1 - $c0) / $r->{requests} : 0;
            push @{ $acc{$kind} }, { us => $us, rps => $r->{requests} / ($r->{duration_us} / 1e6), errors => $r->{errors} };
            printf "cost %-6s round %d: %6.0f req/s, %5.1f us CPU per request, errors %d\n",
                $kind, $round, $acc{$kind}[-1]{rps}, $us, $r->{errors};
        }
    }
    @cost = map { [$_, $acc{$_}] } qw(single group);
    stop_pid($extra->{pid});
}
stop_pid($_->{pid}) for @members;

# ---- report -----------------------------------------------------------
my $stamp = strftime('%Y%m%d-%H%M%S', gmtime);
my $md = "# Balancer rows (issue 13), $stamp UTC\n\n"
       . "One run, loopback, 2 shared cores. `bench/balancer.pl"
       . ($opt{quick} ? ' --quick' : '') . "`: wrk -t2 -c$opt{conns} -d$opt{duration}s on `$path`;"
       . " 4 slowd members, the fourth 10x slower (`slowd -m 10`: $opt{delay} ms vs "
       . ($opt{delay} * 10) . " ms). Module defaults apart from the group itself.\n\n"
       . "## (a) one slow member of four\n\n"
       . "| system | req/s | p50 ms | p99 ms | share of requests on the slow member | errors |\n|---|---|---|---|---|---|\n";
for my $row (@rows) {
    my $r = $row->{r};
    $md .= sprintf "| %s | %.0f | %.1f | %.1f | %.1f%% | %d |\n", $row->{what},
        $r->{requests} / ($r->{duration_us} / 1e6), ($r->{pct}{50} // 0) / 1000, ($r->{pct}{99} // 0) / 1000,
        100 * $row->{slow_share}, $r->{errors};
}
if (@cost) {
    $md .= "\n## (b) CPU per request: a 4-member group vs a single origin\n\n"
         . "Fast backend (delay 0, 1 KiB), wrk -t2 -c64 -d$opt{duration}s, mod_asyncproxy 1 child x 25 threads;"
         . " CPU of every process of the server; $opt{rounds} round(s), the two alternated.\n\n"
         . "| | CPU µs per request (each round) | req/s (each round) |\n|---|---|---|\n";
    for my $c (@cost) {
        $md .= sprintf "| %s | %s | %s |\n", $c->[0] eq 'single' ? 'single origin' : '4-member group (p2c-ewma)',
            join(', ', map { sprintf '%.1f', $_->{us} } @{ $c->[1] }),
            join(', ', map { sprintf '%.0f', $_->{rps} } @{ $c->[1] });
    }
    my ($s, $g) = map { my @v = map { $_->{us} } @{ $_->[1] }; my $t = 0; $t += $_ for @v; $t / @v } @cost;
    $md .= sprintf "\nMean difference: %+.1f µs per request (group - single); the noise between rounds of one kind is shown above.\n", $g - $s;
}
# the engine's part alone, precisely: bench/engine/balance_bench.c
my $micro = "$BIN/balance_bench";
if (-x $micro && ($opt{systems} eq '' || 'cost' =~ /$opt{systems}/)) {
    my $o = `$micro 2>&1`;
    $md .= "\nThe engine's part alone (`build/bench/balance_bench`: pick + done per request, 4 members, "
         . "the group's lock taken for each as the glue does):\n\n```\n$o```\n";
}
print "\n$md";
make_path($OUT);
my $name = $opt{quick} ? 'balancer-quick' : 'balancer';
spew("$OUT/$name-latest.md", $md);
spew("$OUT/$name-$stamp.md", $md) unless $opt{quick};
