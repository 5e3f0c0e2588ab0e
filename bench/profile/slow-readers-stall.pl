#!/usr/bin/perl
# Reproduces the stall with slow readers (issue 5): 4 fresh servers; in each,
# 200 slow readers of 8 MiB, then wrk 64 conns for 5 s on a 0 ms backend;
# prints req/s, p99, the kernel's TCP counters over the load (nstat) and
# module figures. Cause, found 2026-11-30: kernel TCP memory pressure. The
# 200 responses sit in two send buffers each (slowd's and httpd's, ~3.6 MB
# each), ~1.5 GB of socket memory, just over net.ipv4.tcp_mem[1]; the run
# that crosses it shows ExtTCPMemoryPressures=1, PruneCalled, OfoPruned and
# a p99 of 190-950 ms (so far always run 1 of an invocation). SNDBUF=262144
# adds httpd's `SendBufferSize 262144`: no pressure, p99 6-9 ms.
#   perl bench/profile/slow-readers-stall.pl   (needs make, make -C bench slowd)
use strict; use warnings;
use FindBin; use lib "$FindBin::Bin/../../t/lib";
use APX::Httpd; use APX::Client qw(:all); use Time::HiRes qw(sleep time);
my $top = APX::Httpd::top();
for my $run (1..4) {
my $sd = start_slowd();
my $h = APX::Httpd->new(threads => 25, factor => 400, servers => 1, server_limit => 1, loglevel => 'warn',
   global => "AsyncProxyWorkers 2 8\nAsyncProxyMaxParked 10000\n" . ($ENV{SNDBUF} ? "SendBufferSize $ENV{SNDBUF}\n" : ""),
   conf => "AsyncProxyPass /b/ http://127.0.0.1:$sd->{port}/ timeout=60 max=10000\n");
$h->start; my $P = $h->port;
system("wrk -t1 -c16 -d1s http://127.0.0.1:$P/b/delay/0/1024 >/dev/null");
my $pid = fork; if (!$pid) { open STDOUT, '>', '/dev/null'; exec "$top/build/bench/slowclient", '-a', '127.0.0.1', '-p', $P, '-u', '/b/delay/0/8388608', '-c', 200, '-r', 4096, '-i', 100, '-d', 40; }
sleep 1.5;
my %f0 = %{ figures($P) };
system('nstat -n');
my $t0 = time;
my $o = `wrk -t2 -c64 -d5s --latency -s $top/bench/conf/report.lua http://127.0.0.1:$P/b/delay/0/1024 2>&1`;
print $o if $ENV{FULL};
my ($p99) = $o =~ /99%\s+(\S+)/; my ($rps) = $o =~ /Requests\/sec:\s+(\S+)/;
my %f = %{ figures($P) };
my $tcp = join ' ', map { /^(?:Tcp|TcpExt)(\S+)\s+(\d+)/ ? "$1=$2" : () } grep { /Retrans|Prune|Drop|Collapse|Memory|Timeout/ } `nstat`;
# major page faults of the server's processes (code pages read back from
# disk): the stalled runs are the first after an idle period
my $majflt = 0;
for my $pp ($h->pid, split ' ', `pgrep -P ${\ $h->pid}`) {
    my @st = split ' ', (`cat /proc/$pp/stat 2>/dev/null` =~ /\) (.*)/)[0] // '';
    $majflt += $st[9] // 0;
}
$f{MajorFaults} = $majflt;
printf "run %d: %s req/s p99 %s | tcp %s | %s\n", $run, $rps, $p99, $tcp, join(' ', map { "$_=" . ($f{$_} - ($_ =~ /Max|Now|^Workers$|Busy/ ? 0 : ($f0{$_}//0))) } grep { /Gate|^Workers|HandedOver|Queued|MajorFaults/ } sort keys %f);
kill 'TERM', $pid; waitpid $pid, 0;
$h->stop; stop_slowd($sd);
}
