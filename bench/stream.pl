#!/usr/bin/perl
# bench/stream.pl: the streamed-miss row (issue 12 §5). A slow origin
# (bench/slowd ?trickle=65536:100: a 1 MiB body in 64 KiB pieces, one per
# 100 ms, ~1.5 s) behind the cache of mod_asyncproxy and behind nginx
# proxy_cache + proxy_cache_lock, same run:
#   coalesced: one cold key, a fetcher and W waiters sent together: time to
#     first byte and to the last byte of each, backend fetches, bodies whole;
#   distinct: N distinct cold keys at once: peak RSS of the server, bodies
#     whole, backend fetches.
# Loopback only, bounded, stops what it started (by pid). Prints and writes
# results/stream-latest.md (and stream-YYYYmmdd-HHMMSS.md).
#
#   bench/stream.pl [--waiters W] [--rounds R] [--distinct N] [--systems RE] [--out DIR]
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use Getopt::Long;
use IO::Socket::INET;
use IO::Poll qw(POLLIN POLLOUT POLLERR POLLHUP);
use POSIX qw(strftime WNOHANG);
use Time::HiRes qw(time sleep);
my $NOFILE = 20000;
use lib dirname(abs_path($0)) . '/lib';
use APX::Bench qw(raise_nofile children_of tree spawn stop_pid stop_all slurp spew fill free_port wait_port rss_kb $BENCH $TOP $BIN $APACHE $NGINX $MODULE_SO);
raise_nofile($NOFILE, @ARGV);
my %opt = (waiters => 100, rounds => 3, distinct => 1000, systems => '');
GetOptions(\%opt, 'waiters=i', 'rounds=i', 'distinct=i', 'systems=s', 'out=s', 'quick!') or die "bad options\n";
if ($opt{quick} || ($ENV{QUICK} // '') =~ /^(1|yes|true)$/i) { $opt{rounds} = 1; $opt{distinct} = 200 }
my $OUT = $opt{out} // "$BENCH/results";
my $ROOT = $> == 0;
my $SIZE = 1048576;
my $TRICKLE = '65536:100';

sub slowd_stats {
    my ($bport) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$bport") or return {};
    print $s "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    local $/; my $r = <$s> // '';
    return { $r =~ /^(\w+) (\d+)$/mg };
}

# Sends one GET per path at once (in the order given) and reads every
# answer; returns per request { ttfb, total, bytes, ok } (seconds from the
# common start), and the peak RSS of @pids sampled every 100 ms.
sub run_batch {
    my ($port, $paths, $pids) = @_;
    my $poll = IO::Poll->new;
    my (@st, %by);
    my $t0 = time;
    for my $i (0 .. $#$paths) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Blocking => 1)
            or do { push @st, { ok => 0, bytes => 0, err => "connect: $!" }; next };
        print $s "GET $paths->[$i] HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        $s->blocking(0);
        my $r = { s => $s, buf => '', sent => time - $t0, bytes => 0, ok => 0 };
        push @st, $r;
        $by{fileno $s} = $r;
        $poll->mask($s => POLLIN);
    }
    my ($peak, $next_sample) = (0, 0);
    my $end = time + 120;
    while ($poll->handles && time < $end) {
        if (time >= $next_sample) { my $x = rss_kb(@$pids); $peak = $x if $x > $peak; $next_sample = time + 0.1 }
        $poll->poll(0.1);
        for my $s ($poll->handles(POLLIN | POLLERR | POLLHUP)) {
            my $r = $by{fileno $s};
            my $n = sysread($s, my $chunk, 262144);
            if ($n) {
                $r->{ttfb} //= time - $t0;
                if (!defined $r->{hlen}) {
                    $r->{buf} .= $chunk;
                    my $he = index($r->{buf}, "\r\n\r\n");
                    if ($he >= 0) {
                        $r->{hlen} = $he + 4;
                        $r->{status} = $r->{buf} =~ m{^HTTP/1\.\d (\d+)} ? $1 : 0;
                        $r->{bytes} = length($r->{buf}) - $r->{hlen};
                        $r->{buf} = '';
                    }
                } else {
                    $r->{bytes} += $n;
                }
                next;
            }
            next if !defined $n && $!{EAGAIN};
            $r->{total} = time - $t0;
            $r->{ok} = ($r->{status} // 0) == 200 && $r->{bytes} == $SIZE;
            $poll->remove($s);
            close $s;
        }
    }
    for my $s ($poll->handles) { $poll->remove($s); close $s }
    return (\@st, $peak);
}

sub pct { my ($p, @v) = @_; return 0 unless @v; @v = sort { $a <=> $b } @v; return $v[int($p / 100 * $#v + 0.5)] }

my @SYSTEMS = (
    { id => 'asyncproxy', kind => 'httpd', what => 'Apache event, 1 child x 25 threads, mod_asyncproxy + AsyncProxyCache (defaults, AsyncProxyCacheMaxObject 2M)' },
    { id => 'nginx-2', kind => 'nginx', workers => 2, what => 'nginx, 2 workers, proxy_cache + proxy_cache_lock on (lock timeout 30 s)' },
);
my $stamp = strftime('%Y%m%d-%H%M%S', gmtime);
my $TMP = "/tmp/apx-stream-$$";
make_path($TMP);
my $slowd = "$BIN/slowd";
-x $slowd or die "$slowd missing: make -C bench slowd\n";
my (@rows, @rss_rows, @notes);
for my $sys (@SYSTEMS) {
    next if $opt{systems} ne '' && $sys->{id} !~ /$opt{systems}/;
    my $dir = "$TMP/$sys->{id}";
    make_path("$dir/logs", "$dir/htdocs", "$dir/tmp");
    my $bport = free_port();
    my $spid = spawn("$dir/slowd.out", $slowd, '-p', $bport, '-q');
    wait_port($bport, 10) or die "slowd did not start\n";
    my $port = free_port();
    my ($spid_srv, @pids);
    if ($sys->{kind} eq 'nginx') {
        spew("$dir/nginx.conf", fill(slurp("$BENCH/conf/nginx-cache.conf.in"), DIR => $dir, PORT => $port, BPORT => $bport,
             WORKERS => $sys->{workers}, USER => $ROOT ? 'user www-data;' : ''));
        system('chown', '-R', 'www-data', "$dir/tmp") if $ROOT;
        $spid_srv = spawn("$dir/nginx.out", $NGINX, '-c', "$dir/nginx.conf", '-p', "$dir/", '-e', "$dir/logs/error_log");
        wait_port($port, 10) or die "nginx did not start: " . slurp("$dir/logs/error_log");
    } else {
        my %v = (DIR => $dir, PORT => $port, BPORT => $bport, MPM => 'event', SERVERS => 1, THREADS => 25,
                 MAXWORKERS => 25, USER => $ROOT ? "User www-data\nGroup www-data" : '', BUCKETS => '', MODULE => $MODULE_SO);
        spew("$dir/httpd.conf", fill(slurp("$BENCH/conf/httpd-base.conf.in"), %v) . "\n"
             . fill(slurp("$BENCH/conf/httpd-asyncproxy.conf.in"), %v) . "\n"
             . slurp("$BENCH/conf/httpd-cache.conf.in") . "AsyncProxyCacheMaxObject 2M\n");
        system('chown', 'www-data', "$dir/logs") if $ROOT;
        my $out = `$APACHE -f $dir/httpd.conf -k start 2>&1`;
        die "apache2 -k start failed: $out" if $?;
        my $end = time + 10;
        sleep 0.05 until ($spid_srv) = slurp("$dir/logs/httpd.pid") =~ /(\d+)/ or time > $end;
        $APX::Bench::LIVE{$spid_srv} = 1;
        wait_port($port, 10) or die "httpd did not answer: " . slurp("$dir/logs/error_log");
    }
    sleep 0.5;
    @pids = tree($spid_srv);
    my $idle = rss_kb(@pids);
    # coalesced rounds
    my (@f_ttfb, @w_ttfb, @f_total, @w_total, $bad, $fetches, $nreq);
    ($bad, $fetches, $nreq) = (0, 0, 0);
    for my $round (1 .. $opt{rounds}) {
        my $key = "c$round-$$-" . int(rand(1e9));
        my $path = "/b/delay/0/$SIZE?trickle=$TRICKLE&max-age=300&k=$key";
        my $d0 = slowd_stats($bport)->{delay} // 0;
        my ($st) = run_batch($port, [($path) x (1 + $opt{waiters})], \@pids);
        $fetches += (slowd_stats($bport)->{delay} // 0) - $d0;
        my ($f, @w) = @$st;
        push @f_ttfb, ($f->{ttfb} // 99) - $f->{sent};
        push @f_total, ($f->{total} // 99) - $f->{sent};
        push @w_ttfb, map { ($_->{ttfb} // 99) - $_->{sent} } @w;
        push @w_total, map { ($_->{total} // 99) - $_->{sent} } @w;
        $bad += grep { !$_->{ok} } @$st;
        $nreq += @$st;
    }
    push @rows, sprintf("| %s | %d × (1 + %d) | %d | %d | %.0f | %.0f / %.0f | %.0f | %.0f / %.0f |",
        $sys->{id}, $opt{rounds}, $opt{waiters}, $fetches, $nreq - $bad,
        1000 * pct(50, @f_ttfb), 1000 * pct(50, @w_ttfb), 1000 * pct(99, @w_ttfb),
        1000 * pct(50, @f_total), 1000 * pct(50, @w_total), 1000 * pct(99, @w_total));
    # distinct cold keys at once
    my $d0 = slowd_stats($bport)->{delay} // 0;
    my @paths = map { "/b/delay/0/$SIZE?trickle=$TRICKLE&max-age=300&k=d$_-$$" } 1 .. $opt{distinct};
    my $t0 = time;
    my ($st, $peak) = run_batch($port, \@paths, \@pids);
    my $dt = time - $t0;
    my $dfetch = (slowd_stats($bport)->{delay} // 0) - $d0;
    my $ok = grep { $_->{ok} } @$st;
    my @tt = map { ($_->{ttfb} // 99) - $_->{sent} } @$st;
    push @rss_rows, sprintf("| %s | %d | %d | %d | %.0f | %.1f → %.1f | %.1f | %.1f |", $sys->{id}, $opt{distinct}, $ok, $dfetch,
        1000 * pct(99, @tt), $idle / 1024, $peak / 1024, ($peak - $idle) / 1024, $dt);
    push @notes, "- $sys->{id}: $sys->{what}";
    stop_pid($spid_srv);
    if ($sys->{kind} eq 'httpd') { my $e = time + 10; sleep 0.1 while kill(0, $spid_srv) && time < $e }
    delete $APX::Bench::LIVE{$spid_srv};
    stop_pid($spid);
    delete $APX::Bench::LIVE{$spid};
}
remove_tree($TMP);
my $git = `git -C $TOP rev-parse --short HEAD 2>/dev/null` // ''; chomp $git;
my $md = "# Streamed cache misses ($stamp UTC, git $git)\n\n"
  . "`bench/stream.pl" . join('', map { " --$_ $opt{$_}" } grep { $opt{$_} ne '' && $_ ne 'quick' && $_ ne 'out' } sort keys %opt) . "` — origin: bench/slowd, a 1 MiB body in 64 KiB pieces one per 100 ms (~1.5 s), `Cache-Control: max-age=300`; every client sends `Connection: close`; loopback, 2 shared cores.\n\n"
  . "## One cold key: a fetcher and its waiters sent together\n\n"
  . "| system | requests | backend fetches | bodies whole | fetcher TTFB ms | waiters TTFB ms p50 / p99 | fetcher last byte ms | waiters last byte ms p50 / p99 |\n|---|---|---|---|---|---|---|---|\n"
  . join("\n", @rows) . "\n\n"
  . "## Distinct cold keys at once\n\n"
  . "| system | keys | bodies whole | backend fetches | TTFB p99 ms | server RSS MB idle → peak | growth MB | run s |\n|---|---|---|---|---|---|---|---|\n"
  . join("\n", @rss_rows) . "\n\n" . join("\n", @notes) . "\n";
print $md;
make_path($OUT);
spew("$OUT/stream-$stamp.md", $md);
spew("$OUT/stream-latest.md", $md);
