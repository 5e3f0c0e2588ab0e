#!/usr/bin/perl
# Licensed under the Apache License, Version 2.0 (the "License"); you may not
# use this file except in compliance with the License.  You may obtain a copy
# of the License at http://www.apache.org/licenses/LICENSE-2.0
#
# bench/run.pl — the benchmark behind `make bench`: Apache + mod_asyncproxy
# against Apache + mod_proxy_http (25 and 1,000 threads), nginx proxy_pass
# (1 and 2 workers), Apache serving a static file, and the backend (slowd)
# hit directly, in one run on this machine, all on 127.0.0.1; plus the
# response cache of mod_asyncproxy (hits against a static file, and a
# stampede on a cold key counted at the backend).
#
#   bench/run.pl [--quick] [--duration S] [--warmup S] [--systems RE]
#                [--scenarios RE] [--out DIR] [--keep]
#
# For every (scenario, system): a fresh slowd and a fresh server on free
# ports in a temp dir; a short warm-up; then wrk for --duration seconds
# (two wrk processes at 10,000 connections), while a sampler reads
# /proc/PID/{stat,status} of the server's processes every 200 ms. Writes
# OUT/latest.md + latest.csv (quick runs: quick-latest.*) and a timestamped
# copy with the raw outputs and generated configs. See bench/README.md.
#
# Every process it starts is stopped by pid; nothing is killed by name.

use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Copy qw(copy);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use Getopt::Long;
use IO::Socket::INET;
use POSIX qw(:sys_wait_h strftime);
use Time::HiRes qw(time sleep);

my $NOFILE = 20000;

# Servers, wrk and slowd inherit the fd limit: raise it before anything
# starts (Perl has no setrlimit of its own, the shell does).
use lib dirname(abs_path($0)) . '/lib';
use APX::Bench qw(raise_nofile slurp spew free_port wait_port fill $BENCH $TOP $BIN $APACHE $NGINX $MODULE_SO);
raise_nofile($NOFILE, @ARGV);

my %opt = (duration => undef, warmup => undef, systems => '', scenarios => '',
           out => undef, keep => 0, quick => 0);
my $USAGE = "usage: $0 [--quick] [--duration S] [--warmup S] [--systems RE] [--scenarios RE]\n"
          . "              [--out DIR] [--keep]   (see bench/README.md)\n";
GetOptions(\%opt, 'quick!', 'duration=f', 'warmup=f', 'systems=s', 'scenarios=s',
           'out=s', 'keep!', 'help') or die $USAGE;
if ($opt{help}) { print $USAGE; exit 0 }
$opt{quick} = 1 if ($ENV{QUICK} // '') =~ /^(1|yes|true)$/i;

my $SLOWD = "$BIN/slowd";
my $SLOWCLIENT = "$BIN/slowclient";
my $WRK = 'wrk';
my $MODDIR = '/usr/lib/apache2/modules';
my $DURATION = $opt{duration} // ($opt{quick} ? 5 : 15);
my $WARMUP = $opt{warmup} // ($opt{quick} ? 1 : 2);
my $WARMUP_CONNS = 16;          # below 25 threads: a warm-up never queues
my $WRK_TIMEOUT = 10;           # s; a slower answer counts as a timeout error
my $SAMPLE_EVERY = 0.2;
my $OUT = $opt{out} // "$BENCH/results";
my $CLK_TCK = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
my $NPROC = (`nproc 2>/dev/null` =~ /(\d+)/)[0] || 1;
my $ROOT = $> == 0;

# ---- what runs --------------------------------------------------------

# The slow readers' responses must not fit in the server's socket send
# buffer, or the server hands the whole response to the kernel at once and
# a slow reader costs it nothing: on loopback the buffer autotunes up to
# net.ipv4.tcp_wmem's maximum (4 MiB on Debian 12) within one round trip.
# So: 1 MiB (the issue's figure) or twice that maximum, whichever is larger.
my $SLOW_MIB = do {
    my ($wmax) = (slurp('/proc/sys/net/ipv4/tcp_wmem') =~ /(\d+)\s*$/);
    my $mib = $wmax ? int((2 * $wmax + 1048575) / 1048576) : 1;
    $mib < 1 ? 1 : $mib;
};

# procs: Apache children / nginx workers. 10,000 connections need two
# processes everywhere (a proxied request holds two fds, 20,000 per process).
my @SCENARIOS = (
    { id => '1s-1k',     title => 'backend 1 s, 1 KiB, 1,000 conns',   delay => 1000, bytes => 1024,   conns => 1000,  procs => 1 },
    { id => '1s-5k',     title => 'backend 1 s, 1 KiB, 5,000 conns',   delay => 1000, bytes => 1024,   conns => 5000,  procs => 1 },
    { id => '1s-10k',    title => 'backend 1 s, 1 KiB, 10,000 conns',  delay => 1000, bytes => 1024,   conns => 10000, procs => 2, wrk_procs => 2 },
    # Issue #15's shape: the same 10,000 connections from one wrk process
    # (2 threads), as an administrator would measure it.
    { id => '1s-10k-1w', title => 'backend 1 s, 1 KiB, 10,000 conns, one wrk process', delay => 1000, bytes => 1024, conns => 10000, procs => 2, wrk_procs => 1 },
    { id => '1s-1k-100k', title => 'backend 1 s, 100 KiB, 1,000 conns', delay => 1000, bytes => 102400, conns => 1000,  procs => 1 },
    { id => 'fast-64',   title => 'backend 0 ms, 1 KiB, 64 conns',     delay => 0,    bytes => 1024,   conns => 64,    procs => 1 },
    { id => 'slow-200',  title => "200 slow readers of $SLOW_MIB MiB (4 KiB/100 ms each) + wrk 64 conns on 0 ms, 1 KiB",
      delay => 0, bytes => 1024, conns => 64, procs => 1,
      slow => { conns => 200, bytes => $SLOW_MIB * 1048576, read => 4096, interval => 100 } },
    # The response cache (issue #4). Hits: the warm-up stores the object
    # (max-age from the backend), then every request is a hit; compared with
    # Apache serving the same bytes as a file. Stampede: 1,000 connections
    # ask for one cold key of a 1 s backend at once; slowd's /stats counts
    # the fetches (1 expected: the rest park on it and are served from it).
    { id => 'cache-hit', title => 'cache hits: 1 KiB with Cache-Control: max-age=3600, 64 conns (backend 0 ms, fetched once)',
      delay => 0, bytes => 1024, conns => 64, procs => 1, query => '?max-age=3600', count_backend => 1 },
    { id => 'stampede',  title => 'cold key, 1,000 conns at once on a 1 s backend with max-age=3600; backend fetches counted (1 expected)',
      delay => 1000, bytes => 1024, conns => 1000, procs => 1, query => '?max-age=3600&key=stampede',
      warm_query => '?max-age=3600&key=warm-up', duration => 3, count_backend => 1 },
);
my @SYSTEMS = (
    { id => 'direct',          kind => 'direct', label => 'slowd direct' },
    { id => 'static-25',       kind => 'httpd', part => 'static',     threads => 25,   label => 'Apache static file 25 thr' },
    { id => 'static-1000',     kind => 'httpd', part => 'static',     threads => 1000, label => 'Apache static file 1000 thr' },
    { id => 'asyncproxy',      kind => 'httpd', part => 'asyncproxy', threads => 25,   label => 'mod_asyncproxy' },
    { id => 'asyncproxy-cache', kind => 'httpd', part => 'asyncproxy', extra => 'cache', threads => 25,
      label => 'mod_asyncproxy + cache', needs => 'AsyncProxyCache' },
    { id => 'proxy_http-25',   kind => 'httpd', part => 'proxy_http', threads => 25,   label => 'mod_proxy_http 25 thr' },
    { id => 'proxy_http-1000', kind => 'httpd', part => 'proxy_http', threads => 1000, label => 'mod_proxy_http 1000 thr' },
    { id => 'nginx-1',         kind => 'nginx', workers => 1, label => 'nginx 1 worker' },
    { id => 'nginx-2',         kind => 'nginx', workers => 2, label => 'nginx 2 workers' },
);
# Which systems each scenario runs (static only where there is no backend
# wait to measure; 1-process systems cannot hold 10,000 connections).
my %MATRIX = (
    '1s-1k'      => [qw(direct asyncproxy proxy_http-25 proxy_http-1000 nginx-1 nginx-2)],
    '1s-5k'      => [qw(direct asyncproxy proxy_http-25 proxy_http-1000 nginx-1 nginx-2)],
    '1s-10k'     => [qw(direct asyncproxy proxy_http-25 proxy_http-1000 nginx-2)],
    '1s-10k-1w'  => [qw(direct asyncproxy proxy_http-1000 nginx-2)],
    '1s-1k-100k' => [qw(direct asyncproxy proxy_http-25 proxy_http-1000 nginx-1 nginx-2)],
    'fast-64'    => [qw(direct static-25 static-1000 asyncproxy proxy_http-25 proxy_http-1000 nginx-1 nginx-2)],
    'slow-200'   => [qw(direct static-25 static-1000 asyncproxy proxy_http-25 proxy_http-1000 nginx-1 nginx-2)],
    'cache-hit'  => [qw(direct static-25 static-1000 asyncproxy asyncproxy-cache)],
    'stampede'   => [qw(asyncproxy-cache)],
);
if ($opt{quick}) {
    %MATRIX = (
        '1s-1k'    => [qw(direct asyncproxy proxy_http-25 nginx-1)],
        'fast-64'  => [qw(direct static-25 asyncproxy proxy_http-25 nginx-1)],
        'slow-200' => [qw(direct asyncproxy proxy_http-25 nginx-1)],
        'cache-hit' => [qw(static-25 asyncproxy-cache)],
        'stampede' => [qw(asyncproxy-cache)],
    );
}

# ---- process bookkeeping ----------------------------------------------

my %LIVE;          # pid => { what, child (our own child: reap it) }
my $MAIN_PID = $$;

sub stop_pid {
    my ($pid, $secs, $sig) = @_;
    return unless $pid;
    my $info = delete $LIVE{$pid} // { child => 0 };
    kill($sig // 'TERM', $pid);
    my $end = time + ($secs // 15);
    while (time < $end) {
        if ($info->{child}) {
            my $r = waitpid($pid, WNOHANG);
            return 1 if $r == $pid || $r == -1;
        }
        else {
            return 1 unless kill 0, $pid;
        }
        sleep 0.05;
    }
    warn "bench: pid $pid ($info->{what}) ignored SIG" . ($sig // 'TERM') . " for ${secs}s: SIGKILL\n";
    kill 'KILL', $pid;
    waitpid($pid, 0) if $info->{child};
    return 0;
}

sub stop_all {
    for my $pid (sort { $b <=> $a } keys %LIVE) {
        # stop the daemons' children too if their parent is gone
        my @kids = $LIVE{$pid}{child} ? () : descendants($pid);
        stop_pid($pid, 10);
        kill 'KILL', grep { kill 0, $_ } @kids if @kids;
    }
}

$SIG{INT} = $SIG{TERM} = sub {
    return unless defined $MAIN_PID && $$ == $MAIN_PID;
    warn "bench: interrupted, stopping what was started\n";
    stop_all();
    exit 130;
};
END { stop_all() if defined $MAIN_PID && $$ == $MAIN_PID && %LIVE }

# Forks and execs @cmd with stdout+stderr to $out; returns the pid.
sub spawn {
    my ($what, $out, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', $out or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(127);
        open STDIN, '<', '/dev/null';
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }
    $LIVE{$pid} = { what => $what, child => 1 };
    return $pid;
}

sub wait_for_line {
    my ($file, $re, $secs) = @_;
    my $end = time + $secs;
    while (time < $end) {
        my $c = slurp($file);
        return $1 // 1 if $c =~ $re;
        sleep 0.05;
    }
    return;
}

# ---- /proc ------------------------------------------------------------

sub children_of {
    my ($pid) = @_;
    my @kids;
    for my $f (glob "/proc/$pid/task/*/children") {
        push @kids, split ' ', slurp($f);
    }
    return @kids;
}

sub descendants {
    my @todo = children_of($_[0]);
    my @all;
    while (@todo) {
        my $p = shift @todo;
        push @all, $p;
        push @todo, children_of($p);
    }
    return @all;
}

sub tree { my ($root) = @_; return ($root, descendants($root)) }

# (utime + stime in ticks, VmRSS kB, threads) of one process, or ()
sub proc_figures {
    my ($pid) = @_;
    my $st = slurp("/proc/$pid/stat");
    return () unless $st =~ /\)\s+(.*)$/s;
    my @f = split ' ', $1;              # $f[0] is field 3 (state)
    my $cpu = $f[11] + $f[12];          # fields 14, 15
    my $status = slurp("/proc/$pid/status");
    my ($rss) = $status =~ /^VmRSS:\s+(\d+)/m;
    my ($thr) = $status =~ /^Threads:\s+(\d+)/m;
    return ($cpu, $rss // 0, $thr // 0);
}

# TcpExt TCPMemoryPressures: times the kernel entered TCP memory pressure
# (tcp_mem[1] pages of socket buffers in use machine-wide). Under pressure it
# prunes receive queues and drops, and loopback peers wait for a
# retransmission timeout (>= 200 ms): every latency in the row is suspect.
sub tcp_memory_pressures {
    my @l = grep { /^TcpExt:/ } split /\n/, slurp('/proc/net/netstat') // '';
    return undef unless @l == 2;
    my @k = split ' ', $l[0];
    my @v = split ' ', $l[1];
    for my $i (1 .. $#k) { return $v[$i] if $k[$i] eq 'TCPMemoryPressures' }
    return undef;
}

sub rss_threads {
    my ($root) = @_;
    my ($rss, $thr) = (0, 0);
    for my $p (tree($root)) {
        my (undef, $r, $t) = proc_figures($p) or next;
        $rss += $r;
        $thr += $t;
    }
    return ($rss, $thr);
}

# Waits until the server's processes use less than 10% of a core over half
# a second (at most $secs): the slow readers' first responses fill their
# socket buffers, hundreds of MB copied in a second or more, which must not
# land in the measured window.
sub wait_quiet {
    my ($root, $secs) = @_;
    my $cpu = sub { my $t = 0; for (tree($root)) { my ($c) = proc_figures($_) or next; $t += $c } $t };
    my $end = time + $secs;
    my $prev = $cpu->();
    while (time < $end) {
        sleep 0.5;
        my $now = $cpu->();
        return 1 if ($now - $prev) / $CLK_TCK < 0.05;
        $prev = $now;
    }
    return 0;
}

# The sampler: a forked child reading the server's processes every 200 ms
# until SIGTERM, then writing its figures to $file. CPU is counted per pid
# from its first sample (processes born during the run count whole).
sub start_sampler {
    my ($root, $file) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid) {
        $LIVE{$pid} = { what => 'sampler', child => 1 };
        return $pid;
    }
    my $stop = 0;
    local $SIG{TERM} = sub { $stop = 1 };
    local $SIG{INT} = 'IGNORE';
    my (%first, %last, $peak_rss, $thr_at_peak, $max_thr, $n);
    ($peak_rss, $thr_at_peak, $max_thr, $n) = (0, 0, 0, 0);
    my $first_round = 1;
    while (1) {
        my ($rss, $thr) = (0, 0);
        for my $p (tree($root)) {
            my ($cpu, $r, $t) = proc_figures($p) or next;
            $first{$p} = $first_round ? $cpu : 0 unless exists $first{$p};
            $last{$p} = $cpu;
            $rss += $r;
            $thr += $t;
        }
        $first_round = 0;
        $n++;
        if ($rss > $peak_rss) { $peak_rss = $rss; $thr_at_peak = $thr }
        $max_thr = $thr if $thr > $max_thr;
        last if $stop;
        sleep $SAMPLE_EVERY;
    }
    my $ticks = 0;
    $ticks += $last{$_} - $first{$_} for keys %last;
    spew($file, "peak_rss_kb=$peak_rss threads_at_peak=$thr_at_peak max_threads=$max_thr "
              . "cpu_s=" . ($ticks / $CLK_TCK) . " samples=$n pids=" . scalar(keys %last) . "\n");
    POSIX::_exit(0);
}

# ---- servers ------------------------------------------------------------

# slowd's body: byte i is PATTERN[i % 64] (bench/slowd.c)
sub pattern_body {
    my ($n) = @_;
    my $p = join('', 0 .. 9, 'A' .. 'Z', 'a' .. 'z') . "-\n";
    return substr($p x (int($n / 64) + 1), 0, $n);
}

# slowd's GET /stats as { delay => N, requests => N, ... }; {} on failure
sub slowd_stats {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 5) or return {};
    print $s "GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    local $/;
    my $r = <$s> // '';
    close $s;
    my (undef, $body) = split /\r\n\r\n/, $r, 2;
    return { ($body // '') =~ /^(\w+) (\d+)$/mg };
}

# The X-AsyncProxy-Cache value of one response to GET $path ('' if none).
sub cache_label {
    my ($port, $path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 5) or return '';
    print $s "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    local $/;
    my $r = <$s> // '';
    close $s;
    my ($v) = $r =~ /^X-AsyncProxy-Cache:\s*(\S+)/mi;
    return $v // '';
}

sub start_slowd {
    my ($dir) = @_;
    my $out = "$dir/slowd.out";
    my @cmd = ($SLOWD, '-q', '-a', '127.0.0.1', '-p', '0', '-b', '4096');
    my $pid = spawn('slowd', $out, @cmd);
    my $port = wait_for_line($out, qr/slowd listening on [\d.]+:(\d+)/, 10)
        or die "slowd did not start: " . slurp($out);
    return { pid => $pid, port => $port, cmd => "@cmd" };
}

sub start_httpd {
    my ($sys, $sc, $dir, $bport) = @_;
    my $port = free_port();
    my $servers = $sc->{procs};
    my $buckets = '';
    if ($servers == 2) {
        # one bucket per child: buckets = online cores / ratio must be 2
        my $ratio = int($NPROC / 2);
        $buckets = "ListenCoresBucketsRatio $ratio" if $ratio >= 1 && int($NPROC / $ratio) == 2;
    }
    my %v = (DIR => $dir, PORT => $port, BPORT => $bport, MPM => 'event', SERVERS => $servers,
             THREADS => $sys->{threads}, MAXWORKERS => $servers * $sys->{threads},
             USER => $ROOT ? "User www-data\nGroup www-data" : '', BUCKETS => $buckets,
             MODULE => "$dir/../mod_asyncproxy.so");
    my $conf = fill(slurp("$BENCH/conf/httpd-base.conf.in"), %v)
             . "\n" . fill(slurp("$BENCH/conf/httpd-$sys->{part}.conf.in"), %v);
    $conf .= "\n" . fill(slurp("$BENCH/conf/httpd-$sys->{extra}.conf.in"), %v) if $sys->{extra};
    spew("$dir/httpd.conf", $conf);
    if ($sys->{needs}) {
        # a feature this build may not have yet: skip the row, not the run
        my $t = `$APACHE -t -f $dir/httpd.conf 2>&1`;
        die "SKIP: $sys->{needs} is unknown to this build of the module\n"
            if $? && $t =~ /Invalid command '\Q$sys->{needs}\E/;
        die "apache2 -t failed: $t" if $?;
    }
    if ($sys->{part} eq 'static') {
        # the URLs the proxies forward, as files holding slowd's bytes
        make_path("$dir/htdocs/b/delay/0");
        spew("$dir/htdocs/b/delay/0/$sc->{bytes}", pattern_body($sc->{bytes}));
        spew("$dir/htdocs/b/delay/0/$sc->{slow}{bytes}", pattern_body($sc->{slow}{bytes}))
            if $sc->{slow};
    }
    system('chown', 'www-data', "$dir/logs") if $ROOT;
    my $cmd = "$APACHE -f $dir/httpd.conf -k start";
    my $out = `$cmd 2>&1`;
    die "apache2 -k start failed: $out" if $?;
    my $end = time + 10;
    my $pid;
    while (time < $end) {
        ($pid) = slurp("$dir/logs/httpd.pid") =~ /(\d+)/;
        last if $pid;
        sleep 0.05;
    }
    die "httpd: no pid file\n" . slurp("$dir/logs/error_log") unless $pid;
    $LIVE{$pid} = { what => 'httpd', child => 0 };
    wait_port($port, 10) or die "httpd: port $port not answering\n" . slurp("$dir/logs/error_log");
    $end = time + 10;
    sleep 0.05 while children_of($pid) < $servers && time < $end;
    sleep 0.3;
    return { pid => $pid, port => $port, cmd => $cmd, conf => "$dir/httpd.conf",
             log => "$dir/logs/error_log", kind => 'httpd' };
}

sub start_nginx {
    my ($sys, $sc, $dir, $bport) = @_;
    my $port = free_port();
    my $workers = $sc->{procs} == 2 ? 2 : $sys->{workers};
    make_path("$dir/tmp");
    my $conf = fill(slurp("$BENCH/conf/nginx.conf.in"), DIR => $dir, PORT => $port, BPORT => $bport,
                    WORKERS => $workers, USER => $ROOT ? 'user www-data;' : '',
                    REUSEPORT => $workers > 1 ? ' reuseport' : '');
    spew("$dir/nginx.conf", $conf);
    my @cmd = ($NGINX, '-c', "$dir/nginx.conf", '-p', "$dir/", '-e', "$dir/logs/error_log");
    my $pid = spawn('nginx', "$dir/nginx.out", @cmd);
    wait_port($port, 10) or die "nginx: port $port not answering\n" . slurp("$dir/nginx.out")
                                . slurp("$dir/logs/error_log");
    my $end = time + 10;
    sleep 0.05 while children_of($pid) < $workers && time < $end;
    sleep 0.3;
    return { pid => $pid, port => $port, cmd => "@cmd", conf => "$dir/nginx.conf",
             log => "$dir/logs/error_log", kind => 'nginx' };
}

sub stop_server {
    my ($srv) = @_;
    my @kids = descendants($srv->{pid});
    stop_pid($srv->{pid}, 20);
    # a daemon's children normally exit with it; never leave one behind
    my $end = time + 5;
    sleep 0.05 while grep({ kill 0, $_ } @kids) && time < $end;
    kill 'KILL', grep { kill 0, $_ } @kids;
}

# Error-log lines that are not routine, as (count, [distinct samples]).
sub log_errors {
    my ($srv, $dir) = @_;
    my $text = $srv ? slurp($srv->{log}) : '';
    my (@bad, %seen);
    for my $l (split /\n/, $text) {
        next unless $l =~ /:(error|crit|alert|emerg)\]|\[(error|crit|alert|emerg)\]|exit signal|Segmentation|AddressSanitizer/i;
        push @bad, $l;
        (my $key = $l) =~ s/^\[[^\]]*\]\s*//;           # Apache timestamp
        $key =~ s/^\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d //;  # nginx timestamp
        $key =~ s/\d+/N/g;
        $key = substr($key, 0, 100);
        $seen{$key} //= $l;
    }
    my @samples = (values %seen)[0 .. (keys(%seen) > 3 ? 2 : keys(%seen) - 1)];
    return (scalar(@bad), [grep { defined } @samples]);
}

# ---- wrk --------------------------------------------------------------

sub parse_wrk {
    my ($file) = @_;
    my $c = slurp($file);
    my %r = (file => $file);
    if ($c =~ /^APXBENCH (.*)$/m) {
        %r = (%r, map { split /=/, $_, 2 } split ' ', $1);
    }
    else {
        die "wrk produced no summary ($file):\n" . substr($c, 0, 2000);
    }
    $r{pct} = { map { $_->[0] => $_->[1] } pairs($c) };
    return \%r;
}

sub pairs {
    my ($c) = @_;
    my @p;
    push @p, [$1, $2] while $c =~ /^APXPCT (\S+) (\d+)$/mg;
    return @p;
}

# The q-th percentile (µs) of the union of several wrk runs, each known by
# its percentile grid, weighted by its request count.
sub merged_pct {
    my ($q, @runs) = @_;
    @runs = grep { %{ $_->{pct} } } @runs;
    return undef unless @runs;
    my %cand;
    for my $r (@runs) { $cand{$_} = 1 for values %{ $r->{pct} }, $r->{lat_max} }
    my $w = 0;
    $w += $_->{requests} for @runs;
    for my $x (sort { $a <=> $b } keys %cand) {
        my $f = 0;
        for my $r (@runs) {
            my $fi = 0;
            if ($x >= $r->{lat_max}) { $fi = 100 }
            else {
                for my $p (keys %{ $r->{pct} }) {
                    $fi = $p if $r->{pct}{$p} <= $x && $p > $fi;
                }
            }
            $f += $fi * $r->{requests};
        }
        return $x if $f / $w >= $q - 1e-9;
    }
    return undef;
}

# ---- one run ----------------------------------------------------------

my $TMP = tempdir('apx-bench-XXXXXX', TMPDIR => 1, CLEANUP => !$opt{keep});
chmod 0755, $TMP;
my (@ROWS, @COMMANDS, %LOGS, $RAW);

sub run_one {
    my ($sc, $sys) = @_;
    my $id = "$sc->{id}.$sys->{id}";
    my $dir = "$TMP/$id";
    make_path("$dir/logs", "$dir/htdocs", "$dir/tmp");
    chmod 0755, $dir;
    my %row = (scenario => $sc->{id}, system => $sys->{id}, label => $sys->{label},
               conns => $sc->{conns}, slow_conns => $sc->{slow} ? $sc->{slow}{conns} : 0);
    my ($slowd, $srv, $slowc);
    my $ok = eval {
        $slowd = start_slowd($dir);
        if ($sys->{kind} eq 'direct') {
            $srv = { pid => $slowd->{pid}, port => $slowd->{port}, cmd => $slowd->{cmd},
                     kind => 'direct', log => "$dir/slowd.out" };
        }
        elsif ($sys->{kind} eq 'httpd') {
            $srv = start_httpd($sys, $sc, $dir, $slowd->{port});
        }
        else {
            $srv = start_nginx($sys, $sc, $dir, $slowd->{port});
        }
        my $procs = $sys->{kind} eq 'direct' ? 1
                  : $sys->{kind} eq 'nginx' ? ($sc->{procs} == 2 ? 2 : $sys->{workers}) : $sc->{procs};
        $row{procs} = $procs;
        $row{threads_cfg} = $sys->{threads} // '';
        my $prefix = $sys->{kind} eq 'direct' ? '' : '/b';
        my $path = "$prefix/delay/$sc->{delay}/$sc->{bytes}";
        my $url = "http://127.0.0.1:$srv->{port}$path" . ($sc->{query} // '');
        my $warm_url = "http://127.0.0.1:$srv->{port}$path" . ($sc->{warm_query} // $sc->{query} // '');
        push @COMMANDS, "[$id] backend: $slowd->{cmd}";
        push @COMMANDS, "[$id] server: $srv->{cmd}" unless $sys->{kind} eq 'direct';

        # warm-up below the thread count, then let its last requests finish
        my @wcmd = ($WRK, '-t', 1, '-c', $WARMUP_CONNS, '-d', "${WARMUP}s", '--timeout', "${WRK_TIMEOUT}s", $warm_url);
        my $wpid = spawn('wrk warm-up', "$dir/warmup.out", @wcmd);
        waitpid($wpid, 0);
        delete $LIVE{$wpid};
        push @COMMANDS, "[$id] warm-up: @wcmd";
        sleep($sc->{delay} / 1000 + 0.5);

        # idle baseline
        my ($idle_rss, $idle_thr) = (0, 0);
        for (1 .. 3) {
            my ($r, $t) = rss_threads($srv->{pid});
            $idle_rss += $r / 3;
            $idle_thr = $t;
            sleep 0.2;
        }
        $row{idle_rss_kb} = int($idle_rss);
        $row{idle_threads} = $idle_thr;

        my $pressure0 = tcp_memory_pressures();
        if (my $s = $sc->{slow}) {
            my @scmd = ($SLOWCLIENT, '-a', '127.0.0.1', '-p', $srv->{port},
                        '-u', "$prefix/delay/0/$s->{bytes}", '-c', $s->{conns}, '-r', $s->{read},
                        '-i', $s->{interval}, '-d', $DURATION + 60);
            $slowc = spawn('slowclient', "$dir/slowclient.out", @scmd);
            push @COMMANDS, "[$id] slow clients: @scmd";
            wait_for_line("$dir/slowclient.out", qr/slowclient connected/, 15)
                or warn "bench: $id: not every slow client connected within 15 s\n";
            sleep 0.5;
            wait_quiet($srv->{pid}, 15)
                or warn "bench: $id: server still busy 15 s after the slow clients connected\n";
        }

        # backend fetches (slowd's /stats) where a proxy stands in front
        my $fetched0 = $sc->{count_backend} && $sys->{kind} ne 'direct'
                       && ($sys->{part} // '') ne 'static'
                     ? slowd_stats($slowd->{port})->{delay} : undef;
        # connections the proxy opened to the backend during the run (issue
        # 15: pool churn); each /stats call is one accepted connection
        my $accepted0 = $sys->{kind} ne 'direct' && ($sys->{part} // '') ne 'static'
                      ? slowd_stats($slowd->{port})->{accepted} : undef;
        my $sampler = start_sampler($srv->{pid}, "$dir/sampler.out");
        my $nw = $sc->{wrk_procs} // 1;
        my $dur = $sc->{duration} // $DURATION;
        my @wpids;
        for my $i (1 .. $nw) {
            my $c = int($sc->{conns} / $nw);
            my $t = $nw > 1 ? 1 : ($c >= 2 ? 2 : 1);
            my @cmd = ($WRK, '-t', $t, '-c', $c, '-d', "${dur}s", '--timeout', "${WRK_TIMEOUT}s",
                       '--latency', '-s', "$BENCH/conf/report.lua", $url);
            push @wpids, spawn('wrk', "$dir/wrk$i.out", @cmd);
            push @COMMANDS, "[$id] load: @cmd";
        }
        my $end = time + $dur + 120;
        for my $p (@wpids) {
            while (waitpid($p, WNOHANG) == 0) {
                if (time > $end) { stop_pid($p, 5, 'INT'); last }
                sleep 0.1;
            }
            delete $LIVE{$p};
        }
        stop_pid($sampler, 10);
        $row{tcp_pressure} = tcp_memory_pressures() - $pressure0 if defined $pressure0;
        my %smp = map { split /=/, $_, 2 } split ' ', slurp("$dir/sampler.out");
        die "sampler wrote nothing\n" unless exists $smp{peak_rss_kb};
        if (defined $accepted0) {
            my $a1 = slowd_stats($slowd->{port})->{accepted};
            $row{backend_connects} = defined $a1 ? $a1 - $accepted0 - 1 : '';
        }
        if (defined $fetched0) {
            my $f1 = slowd_stats($slowd->{port})->{delay};
            $row{backend_fetches} = defined $f1 ? $f1 - $fetched0 : '';
            $row{cache_label} = cache_label($srv->{port}, $path . ($sc->{query} // ''))
                if $sys->{extra} && $sys->{extra} eq 'cache';
        }

        if ($slowc) {
            stop_pid($slowc, 10);
            my ($line) = slurp("$dir/slowclient.out") =~ /^(slowclient conns=.*)$/m;
            if ($line) {
                my %s = map { split /=/, $_, 2 } grep { /=/ } split ' ', $line;
                $row{slow_responses} = $s{responses};
                $row{slow_mb} = sprintf '%.1f', $s{bytes} / 1048576;
                $row{slow_errors} = $s{errors} + $s{connect_errors} + $s{status_errors};
            }
        }

        my @w = map { parse_wrk("$dir/wrk$_.out") } 1 .. $nw;
        my $req = 0; my $rps = 0;
        my %e = map { $_ => 0 } qw(connect read write status timeout);
        for my $r (@w) {
            $req += $r->{requests};
            $rps += $r->{duration_us} ? $r->{requests} / ($r->{duration_us} / 1e6) : 0;
            $e{$_} += $r->{$_} for keys %e;
        }
        $row{requests} = $req;
        $row{rps} = sprintf '%.1f', $rps;
        $row{"err_$_"} = $e{$_} for keys %e;
        $row{errors} = $e{connect} + $e{read} + $e{write} + $e{timeout} + $e{status};
        my $p50 = merged_pct(50, @w);
        my $p99 = merged_pct(99, @w);
        $row{p50_ms} = defined $p50 ? sprintf('%.2f', $p50 / 1000) : '';
        $row{p99_ms} = defined $p99 ? sprintf('%.2f', $p99 / 1000) : '';
        $row{cpu_s} = sprintf '%.2f', $smp{cpu_s};
        $row{cpu_us_per_req} = $req ? sprintf('%.0f', $smp{cpu_s} * 1e6 / $req) : '';
        $row{peak_rss_mb} = sprintf '%.1f', $smp{peak_rss_kb} / 1024;
        my $inflight = $sc->{conns} + $row{slow_conns};
        $row{rss_kb_per_conn} = sprintf '%.1f', ($smp{peak_rss_kb} - $row{idle_rss_kb}) / $inflight;
        $row{threads} = $smp{max_threads};
        1;
    };
    my $err = $@;
    my $skipped = !$ok && $err =~ /^SKIP: (.*)/ ? $1 : undef;
    stop_pid($slowc, 10) if $slowc && $LIVE{$slowc};
    my ($nlog, $samples) = ($srv && $srv->{kind} ne 'direct') ? log_errors($srv) : (0, []);
    $row{log_errors} = $nlog;
    $LOGS{$id} = $samples if $nlog;
    # keep the raw outputs and configs with the results
    make_path("$RAW/$id");
    for my $f (qw(httpd.conf nginx.conf wrk1.out wrk2.out warmup.out slowclient.out sampler.out slowd.out)) {
        copy("$dir/$f", "$RAW/$id/$f") if -f "$dir/$f";
    }
    if ($srv && $srv->{kind} ne 'direct' && -f $srv->{log}) {
        my @l = split /\n/, slurp($srv->{log});
        my $n = @l;
        @l = (@l[0 .. 199], "... ($n lines in all)") if $n > 200;
        spew("$RAW/$id/error_log", join("\n", @l) . "\n");
    }
    stop_server($srv) if $srv && $srv->{kind} ne 'direct';
    stop_pid($slowd->{pid}, 10) if $slowd;
    if ($skipped) {
        $row{notes} = "skipped: $skipped";
        warn "bench: $id skipped: $skipped\n";
    }
    elsif (!$ok) {
        chomp $err;
        $err =~ s/\s+/ /g;
        $row{notes} = 'FAILED: ' . substr($err, 0, 300);
        warn "bench: $id FAILED: $err\n";
    }
    return \%row;
}

# ---- report -------------------------------------------------------------

sub cmd_out { my $o = `$_[0] 2>&1 </dev/null` // ''; chomp $o; return $o }

sub machine {
    my ($model) = slurp('/proc/cpuinfo') =~ /^model name\s*:\s*(.*)$/m;
    my $ap = (split /\n/, cmd_out("$APACHE -v"))[0] // '?';
    $ap =~ s/^Server version:\s*//;
    my $ng = cmd_out("$NGINX -v");
    $ng =~ s/^nginx version:\s*//;
    my ($wv) = cmd_out("$WRK -v") =~ /^(wrk \S+)/m;
    my $rev = cmd_out("git -C $TOP rev-parse --short HEAD");
    my $dirty = cmd_out("git -C $TOP status --porcelain --untracked-files=no") ne '' ? ' + uncommitted changes' : '';
    my @st = stat($MODULE_SO);
    return sprintf("nproc %d; %s; kernel %s; %s; %s; %s; mod_asyncproxy: git %s%s, %s built %s",
                   $NPROC, $model // '?', cmd_out('uname -r'), $ap, $ng, $wv // 'wrk ?',
                   $rev, $dirty, $MODULE_SO, @st ? strftime('%Y-%m-%d %H:%M:%S', localtime $st[9]) : '?');
}

my @CSV_COLS = qw(scenario system label procs threads_cfg conns slow_conns requests rps ratio_direct
                  p50_ms p99_ms errors err_connect err_read err_write err_timeout err_status
                  cpu_s cpu_us_per_req idle_rss_kb peak_rss_mb rss_kb_per_conn idle_threads threads
                  slow_responses slow_mb slow_errors tcp_pressure backend_fetches backend_connects
                  cache_label log_errors notes);

sub csv_field {
    my ($v) = @_;
    $v //= '';
    return $v =~ /[",\n]/ ? '"' . ($v =~ s/"/""/gr) . '"' : $v;
}

sub fmt_ms {
    my ($v) = @_;
    return '–' if !defined $v || $v eq '';
    return $v >= 100 ? sprintf('%.0f', $v) : $v >= 10 ? sprintf('%.1f', $v) : sprintf('%.2f', $v);
}

sub write_reports {
    my ($stamp, $machine, $started, $final) = @_;
    my %direct = map { $_->{scenario} => $_->{rps} } grep { $_->{system} eq 'direct' && $_->{rps} } @ROWS;
    for my $r (@ROWS) {
        my $d = $direct{$r->{scenario}};
        $r->{ratio_direct} = $d && defined $r->{rps} ? sprintf('%.3f', $r->{rps} / $d) : '';
    }
    my $csv = join(',', @CSV_COLS) . "\n";
    for my $r (@ROWS) {
        $csv .= join(',', map { csv_field($r->{$_}) } @CSV_COLS) . "\n";
    }

    my $kind = $opt{quick} ? 'QUICK run' : 'full run';
    my $md = "# mod_asyncproxy benchmark — $kind, $started\n\n";
    $md .= "Machine: $machine\n\n";
    $md .= "Each row: fresh slowd + fresh server on loopback, a ${WARMUP} s warm-up at $WARMUP_CONNS "
         . "connections, then wrk for ${DURATION} s (--timeout ${WRK_TIMEOUT}s; two wrk processes "
         . "at 10,000 connections, summed). Server CPU, RSS and threads from /proc every "
         . ($SAMPLE_EVERY * 1000) . " ms. Columns: bench/README.md.\n\n";
    $md .= "| scenario | system | procs | conns | req/s | × direct | p50 ms | p99 ms | errors | CPU µs/req | peak RSS MB | RSS KB/conn | threads | notes |\n";
    $md .= "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    my %title = map { $_->{id} => $_->{title} } @SCENARIOS;
    my $last = '';
    for my $r (@ROWS) {
        my @notes;
        push @notes, $r->{notes} if $r->{notes};
        if ($r->{errors}) {
            my @e = map { "$_ $r->{\"err_$_\"}" } grep { $r->{"err_$_"} } qw(connect read write timeout status);
            push @notes, "errors: @e";
        }
        push @notes, "slow readers: $r->{slow_responses} responses, $r->{slow_mb} MB, $r->{slow_errors} errors"
            if $r->{slow_conns} && defined $r->{slow_responses};
        push @notes, "kernel TCP memory pressure: $r->{tcp_pressure}x (see bench/README.md)"
            if $r->{tcp_pressure};
        push @notes, "error log: $r->{log_errors} lines" if $r->{log_errors};
        if (defined $r->{backend_fetches} && $r->{backend_fetches} ne '') {
            push @notes, $r->{scenario} eq 'stampede'
                ? "backend fetches: $r->{backend_fetches} (expected 1)"
                : "backend fetches during the run: $r->{backend_fetches}";
        }
        push @notes, "backend connects: $r->{backend_connects}"
            if defined $r->{backend_connects} && $r->{backend_connects} ne '';
        push @notes, "X-AsyncProxy-Cache: $r->{cache_label}" if $r->{cache_label};
        for my $st (grep { $r->{system} eq 'asyncproxy-cache' && $_->{scenario} eq $r->{scenario}
                           && $_->{system} =~ /^static-/ && $_->{rps} } @ROWS) {
            push @notes, sprintf('× %s %.3f', $st->{system}, $r->{rps} / $st->{rps}) if $r->{rps};
        }
        my $sc = $r->{scenario} eq $last ? '' : "**$r->{scenario}**";
        $last = $r->{scenario};
        my $conns = $r->{conns} . ($r->{slow_conns} ? "+$r->{slow_conns}" : '');
        my $procs = $r->{procs} // '';
        $procs .= "×$r->{threads_cfg}" if $r->{threads_cfg} && $procs ne '';
        $md .= '| ' . join(' | ', $sc, $r->{label}, $procs, $conns,
                    $r->{rps} // '–', $r->{ratio_direct} || '–', fmt_ms($r->{p50_ms}), fmt_ms($r->{p99_ms}),
                    $r->{errors} // '–', $r->{cpu_us_per_req} // '–', $r->{peak_rss_mb} // '–',
                    $r->{rss_kb_per_conn} // '–', $r->{threads} // '–', join('; ', @notes)) . " |\n";
    }
    $md .= "\nScenarios:\n\n";
    for my $s (@SCENARIOS) {
        next unless $MATRIX{$s->{id}};
        $md .= "- **$s->{id}**: $s->{title}\n";
    }
    if (%LOGS) {
        $md .= "\n## Server error-log lines (level error and above; distinct samples)\n\n";
        for my $id (sort keys %LOGS) {
            $md .= "- $id:\n";
            $md .= "  - `" . substr($_, 0, 240) . "`\n" for @{ $LOGS{$id} };
        }
    }
    $md .= "\n## Commands\n\n";
    $md .= "Run: `" . ($opt{quick} ? 'make bench QUICK=1' : 'make bench') . "` (bench/run.pl"
         . ($opt{quick} ? ' --quick' : '') . "); servers and load run with `ulimit -n $NOFILE`. "
         . "Generated configs and raw outputs: `" . ($RAW =~ s/^\Q$BENCH\E\///r) . "/`. "
         . "Ports are picked free at run time; RUNDIR is a fresh temp dir per row.\n\n```\n";
    for my $c (@COMMANDS) {
        (my $x = $c) =~ s/\Q$TMP\E\/[^\/\s]+/RUNDIR/g;
        $md .= "$x\n";
    }
    $md .= "```\n";
    $md .= "\n(incomplete: the run was interrupted or is still going)\n" unless $final;

    my $pre = $opt{quick} ? 'quick-' : '';
    spew("$OUT/$pre$stamp.md", $md);
    spew("$OUT/$pre$stamp.csv", $csv);
    copy("$OUT/$pre$stamp.md", "$OUT/${pre}latest.md");
    copy("$OUT/$pre$stamp.csv", "$OUT/${pre}latest.csv");
}

# ---- main -------------------------------------------------------------

sub need {
    my ($path, $hint) = @_;
    return if -x $path || (index($path, '/') < 0 && system("command -v $path >/dev/null 2>&1") == 0);
    die "bench: $path not found — $hint\n";
}

sub ensure_packages {
    my @miss;
    push @miss, 'wrk' if system('command -v wrk >/dev/null 2>&1') != 0;
    push @miss, 'nginx' unless -x $NGINX;
    push @miss, 'apache2' unless -x $APACHE;
    return unless @miss;
    die "bench: missing @miss and not root: install them first\n" unless $ROOT;
    warn "bench: installing @miss\n";
    system("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends @miss") == 0
        or die "bench: apt-get install @miss failed\n";
}

ensure_packages();
need($SLOWD, 'make -C bench slowd');
need($SLOWCLIENT, 'make -C bench slowclient');
need($MODULE_SO, 'build the module first: make');
-f "$MODDIR/mod_proxy_http.so" or die "bench: $MODDIR/mod_proxy_http.so missing\n";
my $nofile = cmd_out('ulimit -n');
warn "bench: open-file limit is $nofile, not $NOFILE: 10,000-connection rows will fail\n"
    if $nofile =~ /^\d+$/ && $nofile < $NOFILE;
# snapshot the module: a rebuild during the run must not change it
copy($MODULE_SO, "$TMP/mod_asyncproxy.so") or die "copy $MODULE_SO: $!";
chmod 0755, "$TMP/mod_asyncproxy.so";

my $started = strftime('%Y-%m-%d %H:%M:%S %Z', localtime);
my $stamp = strftime('%Y%m%d-%H%M%S', localtime);
$RAW = "$OUT/" . ($opt{quick} ? 'quick-' : '') . "$stamp-raw";
make_path($OUT, $RAW);
my $machine = machine();
my %sysby = map { $_->{id} => $_ } @SYSTEMS;
my @plan;
for my $sc (@SCENARIOS) {
    next unless $MATRIX{$sc->{id}};
    next if $opt{scenarios} ne '' && $sc->{id} !~ /$opt{scenarios}/;
    for my $sid (@{ $MATRIX{$sc->{id}} }) {
        next if $opt{systems} ne '' && $sid !~ /$opt{systems}/;
        push @plan, [$sc, $sysby{$sid}];
    }
}
my $t0 = time;
printf STDERR "bench: %d runs of %g s (+%g s warm-up); results in %s\n", scalar(@plan), $DURATION, $WARMUP, $OUT;
print STDERR "bench: $machine\n";
my $i = 0;
for my $p (@plan) {
    my ($sc, $sys) = @$p;
    $i++;
    printf STDERR "bench: [%d/%d %3.0fs] %-11s %-16s ", $i, scalar(@plan), time - $t0, $sc->{id}, $sys->{id};
    my $row = run_one($sc, $sys);
    push @ROWS, $row;
    printf STDERR "%9s req/s  p50 %s ms  p99 %s ms  errors %s  cpu %s us/req  rss %s MB  thr %s%s\n",
        $row->{rps} // '-', $row->{p50_ms} // '-', $row->{p99_ms} // '-', $row->{errors} // '-',
        $row->{cpu_us_per_req} // '-', $row->{peak_rss_mb} // '-', $row->{threads} // '-',
        $row->{notes} ? "  $row->{notes}" : '';
    write_reports($stamp, $machine, $started, 0);
    sleep 0.5;
}
write_reports($stamp, $machine, $started, 1);
printf STDERR "bench: done in %.0f s: %s/%slatest.md\n", time - $t0, $OUT, $opt{quick} ? 'quick-' : '';
