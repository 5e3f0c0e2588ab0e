#!/usr/bin/perl
# bench/idle.pl: what an idle keep-alive connection costs the server
# (issue 15). For each system: N client connections each make one request
# (kept alive), then wait; the server child's RSS before and after, over N,
# is the cost of one idle connection. Systems: mod_asyncproxy (a proxied
# request, the connection adopted by the module) and Apache's own event MPM
# keep-alive (a static file of the same size). Loopback only, bounded in
# count and time, stops what it started (by pid).
#
#   bench/idle.pl [--conns N] [--settle S] [--systems RE]
#
# Prints a markdown table; raw logs stay in the temporary directories.
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use Getopt::Long;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
my $NOFILE = 20000;
use lib dirname(abs_path($0)) . '/lib';
use APX::Bench qw(raise_nofile rss_kb $BENCH $TOP $BIN);
raise_nofile($NOFILE, @ARGV);
use lib dirname(dirname(abs_path($0))) . '/t/lib';
use APX::Httpd;
my %opt = (conns => 10000, settle => 4, systems => '');
GetOptions(\%opt, 'conns=i', 'settle=f', 'systems=s') or die "usage: $0 [--conns N] [--settle S] [--systems RE]\n";
my $N = $opt{conns};
die "--conns 1..18000\n" if $N < 1 || $N > 18000;

# slowd, the backend
my $slowd = "$BIN/slowd";
-x $slowd or die "$slowd missing: make -C bench slowd\n";
my $bport = APX::Httpd::free_port();
my $spid = fork // die;
if (!$spid) { open STDOUT, '>', '/dev/null'; exec $slowd, '-p', $bport, '-q'; exit 127 }
for (1 .. 50) { last if IO::Socket::INET->new(PeerAddr => "127.0.0.1:$bport"); sleep 0.1 }

my @rows;
for my $sys ({ id => 'asyncproxy', path => '/p/delay/0/1024', what => 'proxied request, connection adopted by mod_asyncproxy' },
             { id => 'event-static', path => '/f1k.txt', what => "static file, Apache event MPM's own keep-alive" }) {
    next if $opt{systems} ne '' && $sys->{id} !~ /$opt{systems}/;
    my $h = APX::Httpd->new(mpm => 'event', threads => 25, keepalive_timeout => 120, timeout => 60,
                            loglevel => 'warn',
                            conf => "AsyncProxyPass /p/ http://127.0.0.1:$bport/\nMaxKeepAliveRequests 0\n");
    $h->write_file('htdocs/f1k.txt', 'x' x 1024);
    $h->start;
    my ($child) = $h->children;
    # warm-up: threads, pools, the backend connection pool
    for (1 .. 200) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $h->port) or next;
        print $s "GET $sys->{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        local $/; my $junk = <$s>;
    }
    sleep 1;
    my $rss0 = rss_kb($child);
    my (@socks, $fail);
    $fail = 0;
    my $t0 = time;
    for my $i (1 .. $N) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $h->port, Timeout => 5);
        if (!$s) { $fail++; next }
        print $s "GET $sys->{path} HTTP/1.1\r\nHost: x\r\n\r\n";
        my ($buf, $ok) = ('', 0);
        while (sysread($s, $buf, 65536, length $buf)) {
            if ($buf =~ /\r\n\r\n/ && $buf =~ /Content-Length: (\d+)/i) {
                my $need = $1 + index($buf, "\r\n\r\n") + 4;
                if (length($buf) >= $need) { $ok = $buf =~ m{^HTTP/1\.1 200}; last }
            }
        }
        if (!$ok) { $fail++; close $s; next }
        push @socks, $s;
        last if time - $t0 > 120;
    }
    my $open_s = time - $t0;
    sleep $opt{settle};
    my $rss1 = rss_kb($child);
    # still open on the server's side: one more request on the last one
    my $alive = 0;
    if (@socks) {
        my $s = $socks[-1];
        print $s "GET $sys->{path} HTTP/1.1\r\nHost: x\r\n\r\n";
        my $buf = '';
        sysread($s, $buf, 65536);
        $alive = $buf =~ m{^HTTP/1\.1 200} ? 1 : 0;
    }
    my $n = scalar @socks;
    push @rows, sprintf("| %s | %d / %d | %.1f | %.1f → %.1f | %.1f | %s |", $sys->{id}, $n, $N, $open_s,
                        $rss0 / 1024, $rss1 / 1024, $n ? ($rss1 - $rss0) / $n : 0, $alive ? 'yes' : 'NO');
    close $_ for @socks;
    $h->stop;
}
kill 'TERM', $spid;
waitpid $spid, 0;
print "# Idle keep-alive connections ($N per system, settled $opt{settle} s)\n\n";
print "| system | kept open / asked | open phase s | child RSS MB before → after | KB per idle conn | last conn still served |\n";
print "|---|---|---|---|---|---|\n";
print "$_\n" for @rows;
