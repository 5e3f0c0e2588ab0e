#!/usr/bin/perl
# Licensed under the Apache License, Version 2.0 (the "License"); you may not
# use this file except in compliance with the License.  You may obtain a copy
# of the License at http://www.apache.org/licenses/LICENSE-2.0
#
# bench/profile/first-requests.pl — the server's CPU for the FIRST request of
# new connections (the opening burst of the 1s-* scenarios), apart from the
# steady state: opens CONNS connections at once, sends one keep-alive GET on
# each, reads every response, and reports the CPU the given server processes
# used meanwhile (utime + stime from /proc) per request. Connections stay open
# until the figure is taken, so closing is not counted. With HOLD=S and
# READY=FILE in the environment, FILE is then created and the connections
# stay open and quiet S seconds more (profile.sh idletrim: the idle trims).
# Called by profile.sh first and idletrim; loopback only.
#   first-requests.pl PORT PATH CONNS PID...
use strict; use warnings;
use IO::Socket::INET; use IO::Select; use POSIX qw(sysconf);
use Time::HiRes qw(time);
my ($port, $path, $n, @pids) = @ARGV;
die "usage: $0 PORT PATH CONNS PID...\n" unless @pids;
my $tck = sysconf(POSIX::_SC_CLK_TCK());
sub ticks { my $t = 0; for (@pids) { open my $f, '<', "/proc/$_/stat" or next;
    my @f = split ' ', (<$f> =~ /\) (.*)/)[0]; $t += $f[11] + $f[12] } $t }
sub switches { my $t = 0; for my $p (@pids) { for my $f (glob "/proc/$p/task/*/status") {
    open my $fh, '<', $f or next; while (<$fh>) { $t += $1 if /ctxt_switches:\s+(\d+)/ } } } $t }
my $c0 = ticks(); my $x0 = switches(); my $t0 = time;
my (@s, %buf, %need);
for (1 .. $n) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
        or die "connect: $!\n";
    syswrite $s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    push @s, $s;
}
my $sel = IO::Select->new(@s);
my ($done, $bad) = (0, 0);
while ($sel->count && time - $t0 < 60) {
    for my $s ($sel->can_read(1)) {
        my $r = sysread $s, my $chunk, 65536;
        if (!$r) { $bad++; $sel->remove($s); next }
        $buf{$s} .= $chunk;
        if (!defined $need{$s} && $buf{$s} =~ /\r\n\r\n/) {
            my ($head) = $buf{$s} =~ /^(.*?\r\n\r\n)/s;
            $bad++ unless $head =~ m{^HTTP/1\.1 200};
            my ($cl) = $head =~ /^Content-Length:\s*(\d+)/mi;
            $need{$s} = length($head) + ($cl // 0);
        }
        if (defined $need{$s} && length $buf{$s} >= $need{$s}) { $done++; $sel->remove($s) }
    }
}
my $c1 = ticks(); my $x1 = switches();
printf "first requests: %d answered (%d failed) in %.2f s; server CPU %.0f us and %.1f context "
    . "switches per first request\n", $done, $bad, time - $t0,
    ($c1 - $c0) * 1e6 / $tck / ($done || 1), ($x1 - $x0) / ($done || 1);
if ($ENV{READY}) {
    open my $f, '>', $ENV{READY} or die "$ENV{READY}: $!\n";
    close $f;
    sleep($ENV{HOLD} // 0);
}
