#!/usr/bin/perl
# bench/ws.pl: the WebSocket row of the benchmark (issue 14). For each
# system: a fresh wsecho backend, a fresh server, wsload opens N tunnels
# through it, each echoing a small message every second for D seconds; the
# server's RSS, CPU and threads are sampled from /proc. Writes
# results/ws-latest.md (and ws-YYYYmmdd-HHMMSS.md); raw outputs in
# results/ws-…-raw/ (not in git). See bench/README.md, "WebSocket row".
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use File::Copy qw(copy);
use Getopt::Long;
use IO::Socket::INET;
use POSIX qw(strftime WNOHANG);
use Time::HiRes qw(time sleep);

my $NOFILE = 20000;
use lib dirname(abs_path($0)) . '/lib';
use APX::Bench qw(raise_nofile slurp spew free_port wait_port fill $BENCH $TOP $BIN $APACHE $NGINX $MODULE_SO);
raise_nofile($NOFILE, @ARGV);

my %opt = (systems => '', quick => 0, threads_big => 1000, inflight => 1000);
my $USAGE = "usage: $0 [--quick] [--conns N] [--duration S] [--systems RE] [--connect-timeout S]\n"
          . "             [--threads-big N] [--inflight N] [--out DIR]\n";
my @ARGS = @ARGV;
GetOptions(\%opt, 'quick!', 'conns=i', 'duration=i', 'systems=s', 'connect_timeout|connect-timeout=i',
           'threads_big|threads-big=i', 'inflight=i', 'out=s', 'help') or die $USAGE;
if ($opt{help}) { print $USAGE; exit 0 }
$opt{quick} = 1 if ($ENV{QUICK} // '') =~ /^(1|yes|true)$/i;
# full: 9,000 tunnels (18,000 fds: the largest round count one child holds
# under the 20,000 fd limit), 60 s; quick: 500 tunnels, 10 s
$opt{conns} //= $opt{quick} ? 500 : 9000;
$opt{duration} //= $opt{quick} ? 10 : 60;
$opt{connect_timeout} //= $opt{quick} ? 10 : 30;

my $OUT = $opt{out} // "$BENCH/results";
my $CLK_TCK = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
my $ROOT = $> == 0;
my $N = $opt{conns};
my $D = $opt{duration};

my @SYSTEMS = (
    { id => 'asyncproxy', kind => 'httpd', part => 'ws-asyncproxy', threads => 25,
      what => 'Apache event, 1 child x 25 threads, mod_asyncproxy upgrade=websocket' },
    { id => 'nginx-2', kind => 'nginx', workers => 2,
      what => 'nginx, 2 workers' },
    { id => 'proxy_http-25', kind => 'httpd', part => 'ws-proxy_http', threads => 25,
      what => 'Apache event, 1 child x 25 threads, mod_proxy_http upgrade=websocket' },
    { id => "proxy_http-$opt{threads_big}", kind => 'httpd', part => 'ws-proxy_http', threads => $opt{threads_big},
      what => "Apache event, 1 child x $opt{threads_big} threads, mod_proxy_http upgrade=websocket" },
);
@SYSTEMS = grep { $_->{id} =~ /$opt{systems}/ } @SYSTEMS if $opt{systems} ne '';

my %LIVE;
my $MAIN_PID = $$;

sub stop_pid {
    my ($pid, $secs) = @_;
    return unless $pid;
    my $info = delete $LIVE{$pid} // { child => 0 };
    kill 'TERM', $pid;
    my $end = time + ($secs // 15);
    while (time < $end) {
        if ($info->{child}) { my $r = waitpid($pid, WNOHANG); return 1 if $r == $pid || $r == -1 }
        else { return 1 unless kill 0, $pid }
        sleep 0.05;
    }
    warn "ws: pid $pid ignored SIGTERM: SIGKILL\n";
    kill 'KILL', $pid;
    waitpid($pid, 0) if $info->{child};
    return 0;
}
sub stop_all {
    for my $pid (sort { $b <=> $a } keys %LIVE) {
        my @kids = $LIVE{$pid}{child} ? () : descendants($pid);
        stop_pid($pid, 10);
        kill 'KILL', grep { kill 0, $_ } @kids if @kids;
    }
}
$SIG{INT} = $SIG{TERM} = sub { return unless $$ == $MAIN_PID; stop_all(); exit 130 };
END { stop_all() if defined $MAIN_PID && $$ == $MAIN_PID && %LIVE }

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
sub children_of { my @k; push @k, split ' ', slurp($_) for glob "/proc/$_[0]/task/*/children"; @k }
sub descendants { my @todo = children_of($_[0]); my @all; while (@todo) { my $p = shift @todo; push @all, $p; push @todo, children_of($p) } @all }
sub tree { ($_[0], descendants($_[0])) }
sub proc_figures {
    my ($pid) = @_;
    my $st = slurp("/proc/$pid/stat");
    return () unless $st =~ /\)\s+(.*)$/s;
    my @f = split ' ', $1;
    my $status = slurp("/proc/$pid/status");
    my ($rss) = $status =~ /^VmRSS:\s+(\d+)/m;
    my ($thr) = $status =~ /^Threads:\s+(\d+)/m;
    return ($f[11] + $f[12], $rss // 0, $thr // 0);
}
# (cpu ticks, rss kB, threads) summed over the server's processes
sub figures {
    my ($c, $r, $t) = (0, 0, 0);
    for (tree($_[0])) { my @x = proc_figures($_) or next; $c += $x[0]; $r += $x[1]; $t += $x[2] }
    return ($c, $r, $t);
}

sub start_server {
    my ($sys, $dir, $bport) = @_;
    my $port = free_port();
    make_path("$dir/logs", "$dir/htdocs", "$dir/tmp");
    if ($sys->{kind} eq 'nginx') {
        spew("$dir/nginx.conf", fill(slurp("$BENCH/conf/nginx-ws.conf.in"), DIR => $dir, PORT => $port,
             BPORT => $bport, WORKERS => $sys->{workers}, USER => $ROOT ? 'user www-data;' : ''));
        my @cmd = ($NGINX, '-c', "$dir/nginx.conf", '-p', "$dir/", '-e', "$dir/logs/error_log");
        my $pid = spawn('nginx', "$dir/nginx.out", @cmd);
        wait_port($port, 10) or die "nginx did not start: " . slurp("$dir/nginx.out") . slurp("$dir/logs/error_log");
        my $end = time + 10;
        sleep 0.05 while children_of($pid) < $sys->{workers} && time < $end;
        sleep 0.3;
        return { pid => $pid, port => $port, log => "$dir/logs/error_log", conf => "$dir/nginx.conf" };
    }
    my %v = (DIR => $dir, PORT => $port, BPORT => $bport, MPM => 'event', SERVERS => 1,
             THREADS => $sys->{threads}, MAXWORKERS => $sys->{threads},
             USER => $ROOT ? "User www-data\nGroup www-data" : '', BUCKETS => '',
             MODULE => "$dir/../mod_asyncproxy.so");
    spew("$dir/httpd.conf", fill(slurp("$BENCH/conf/httpd-base.conf.in"), %v) . "\n"
                          . fill(slurp("$BENCH/conf/httpd-$sys->{part}.conf.in"), %v));
    system('chown', 'www-data', "$dir/logs") if $ROOT;
    my $out = `$APACHE -f $dir/httpd.conf -k start 2>&1`;
    die "apache2 -k start failed: $out" if $?;
    my ($pid, $end) = (undef, time + 10);
    while (time < $end) { ($pid) = slurp("$dir/logs/httpd.pid") =~ /(\d+)/; last if $pid; sleep 0.05 }
    die "httpd: no pid file\n" . slurp("$dir/logs/error_log") unless $pid;
    $LIVE{$pid} = { what => 'httpd', child => 0 };
    wait_port($port, 10) or die "httpd: port $port not answering\n" . slurp("$dir/logs/error_log");
    $end = time + 10;
    sleep 0.05 while children_of($pid) < 1 && time < $end;
    sleep 0.5;
    return { pid => $pid, port => $port, log => "$dir/logs/error_log", conf => "$dir/httpd.conf" };
}

sub kv { my %h; for (split /\n/, $_[0]) { $h{$1} = $2 if /^(\w+)=(.*)$/ } \%h }

my $stamp = strftime('%Y%m%d-%H%M%S', gmtime);
my $tag = $opt{quick} ? 'ws-quick' : 'ws';
my $RAW = "$OUT/$tag-$stamp-raw";
my $TMP = "$OUT/tmp/ws-$$";
make_path($RAW, $TMP);
copy($MODULE_SO, "$TMP/mod_asyncproxy.so") or die "copy $MODULE_SO: $!";
chmod 0755, $TMP, "$TMP/mod_asyncproxy.so";
system('chown', '-R', 'www-data', $TMP) if $ROOT;

my @rows;
for my $sys (@SYSTEMS) {
    my $dir = "$TMP/$sys->{id}";
    make_path($dir);
    system('chown', 'www-data', $dir) if $ROOT;
    printf STDERR "== %s: %d conns, %d s\n", $sys->{id}, $N, $D;
    my $bport = free_port();
    my $bpid = spawn('wsecho', "$dir/wsecho.out", "$BIN/wsecho", $bport);
    wait_port($bport, 10) or die "wsecho did not start: " . slurp("$dir/wsecho.out");
    my $srv = eval { start_server($sys, $dir, $bport) };
    if (!$srv) { warn "ws: $sys->{id}: $@"; stop_pid($bpid); push @rows, { sys => $sys, error => "$@" }; next }
    my (undef, $rss0, $thr0) = figures($srv->{pid});
    my @cmd = ("$BIN/wsload", '-p', $srv->{port}, '-u', '/ws/echo', '-c', $N, '-d', $D,
               '-k', $opt{inflight}, '-t', $opt{connect_timeout});
    my $lout = "$dir/wsload.out";
    my $t0 = time;
    my $lpid = spawn('wsload', $lout, @cmd);
    my ($cpu1, $tw1, $cpu2, $tw2, $peak_rss, $peak_thr) = (undef, undef, undef, undef, 0, 0);
    # phase 1 (connect) ends when wsload prints connect_s=
    while (1) {
        last if slurp($lout) =~ /^connect_s=/m;
        if (waitpid($lpid, WNOHANG) == $lpid) { delete $LIVE{$lpid}; $lpid = 0; last }
        die "wsload: no connect phase end\n" if time - $t0 > $opt{connect_timeout} + 30;
        sleep 0.05;
    }
    ($cpu1) = figures($srv->{pid});
    $tw1 = time;
    my $end = $tw1 + $D;
    while (time < $end && $lpid) {
        my (undef, $r, $t) = figures($srv->{pid});
        $peak_rss = $r if $r > $peak_rss;
        $peak_thr = $t if $t > $peak_thr;
        sleep 0.2;
    }
    ($cpu2) = figures($srv->{pid});
    $tw2 = time;
    if ($lpid) {
        my $wend = time + 15;
        while (time < $wend) { if (waitpid($lpid, WNOHANG) == $lpid) { delete $LIVE{$lpid}; $lpid = 0; last } sleep 0.1 }
        stop_pid($lpid, 5) if $lpid;
    }
    my $r = kv(slurp($lout));
    my @kids = descendants($srv->{pid});
    stop_pid($srv->{pid}, 20);
    my $e2 = time + 5;
    sleep 0.05 while grep({ kill 0, $_ } @kids) && time < $e2;
    kill 'KILL', grep { kill 0, $_ } @kids;
    stop_pid($bpid);
    my $rawd = "$RAW/$sys->{id}";
    make_path($rawd);
    copy($_, $rawd) for grep { -f } ($lout, $srv->{conf}, "$dir/wsecho.out");
    spew("$rawd/error_log.head", join('', grep { defined } (split /^/m, slurp($srv->{log}))[0 .. 199]) ) if -f $srv->{log};
    spew("$rawd/cmd", "@cmd\n");
    my $est = $r->{established} // 0;
    push @rows, { sys => $sys, r => $r, rss0 => $rss0, thr0 => $thr0, peak_rss => $peak_rss,
                  peak_thr => $peak_thr, cpu_s => ($cpu2 - $cpu1) / $CLK_TCK, win => $tw2 - $tw1,
                  est => $est };
    printf STDERR "   established %d/%d, sent %s, echoed %s, p99 %s ms, rss %d->%d kB, threads %d\n",
        $est, $N, $r->{sent} // '?', $r->{echoed} // '?', $r->{p99_ms} // '?', $rss0, $peak_rss, $peak_thr;
}

# ---- report ----
my $host = `uname -srm`; chomp $host;
my $ncpu = (`nproc` =~ /(\d+)/)[0];
my $md = "# WebSocket tunnels ($stamp UTC)\n\n"
       . "`bench/ws.pl " . join(' ', @ARGS) . "` — $N connections asked per system, each sending a "
       . "32-byte masked text frame every 1 s (spread evenly), $D s measured; echo backend `wsecho`; "
       . "load `wsload` (handshakes in flight ≤ $opt{inflight}, connect phase ≤ $opt{connect_timeout} s). "
       . "$host, $ncpu cores, everything on 127.0.0.1.\n\n"
       . "| system | tunnels up / asked | msgs/s | echoed % | p50 ms | p99 ms | max ms | RSS idle → peak MB | RSS KB/tunnel | CPU µs/msg | threads |\n"
       . "|---|---|---|---|---|---|---|---|---|---|---|\n";
my @notes;
for my $row (@rows) {
    my $s = $row->{sys};
    if ($row->{error}) { $md .= "| $s->{id} | did not start | | | | | | | | | |\n"; push @notes, "$s->{id}: $row->{error}"; next }
    my $r = $row->{r};
    my $echoed = $r->{echoed} // 0;
    my $kb = $row->{est} ? ($row->{peak_rss} - $row->{rss0}) / $row->{est} : 0;
    my $us = $echoed ? $row->{cpu_s} * 1e6 / $echoed : 0;
    $md .= sprintf "| %s | %d / %d | %.0f | %.2f | %.2f | %.2f | %.1f | %.1f → %.1f | %.1f | %.1f | %d |\n",
        $s->{id}, $row->{est}, $N, $r->{msgs_per_s} // 0, $r->{echo_pct} // 0, $r->{p50_ms} // 0,
        $r->{p99_ms} // 0, $r->{max_ms} // 0, $row->{rss0} / 1024, $row->{peak_rss} / 1024, $kb, $us, $row->{peak_thr};
    my $not = $N - $row->{est} - ($r->{connect_failed} // 0) - ($r->{handshake_failed} // 0);
    push @notes, sprintf "%s (%s): connect phase %.1f s; connect failed %d, handshake failed/timed out %d, not attempted %d (at most %d handshakes in flight); closed during the run %d; sends refused (full socket buffer) %d; server CPU %.2f s over %.1f s",
        $s->{id}, $s->{what}, $r->{connect_s} // 0, $r->{connect_failed} // 0, $r->{handshake_failed} // 0,
        $not, $opt{inflight}, $r->{closed} // 0, $r->{send_failed} // 0, $row->{cpu_s}, $row->{win};
}
$md .= "\nNotes:\n\n" . join('', map { "- $_\n" } @notes)
     . "\nColumns: msgs/s = echoes received ÷ run time; echoed % = echoes ÷ messages sent (an echo later than 2 s after the end is lost); "
     . "p50/p99/max = echo latency (send → echo back at the client), 10 µs buckets; RSS = sum of VmRSS of the server's processes, idle = after start, "
     . "peak = highest 200 ms sample during the run; RSS KB/tunnel = (peak − idle) ÷ tunnels up; CPU µs/msg = utime+stime of the server's processes "
     . "during the run ÷ echoes (each echo crosses the proxy twice); threads = highest sum of Threads: during the run.\n";
make_path($OUT);
spew("$OUT/$tag-$stamp.md", $md);
spew("$OUT/$tag-latest.md", $md);
print $md;
remove_tree($TMP);
