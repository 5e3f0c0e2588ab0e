#!/usr/bin/perl
# Licensed under the Apache License, Version 2.0 (the "License"); you may not
# use this file except in compliance with the License.  You may obtain a copy
# of the License at http://www.apache.org/licenses/LICENSE-2.0
#
# bench/profile/idle-hold.pl — opens CONNS keep-alive connections, sends one
# GET on each, reads every response, touches READY_FILE, then keeps the
# connections open and quiet for HOLD seconds (the server's idle trims run
# meanwhile) and exits. Called by profile.sh idletrim; loopback only.
#   idle-hold.pl PORT PATH CONNS HOLD READY_FILE
use strict; use warnings;
use IO::Socket::INET; use IO::Select;
my ($port, $path, $n, $hold, $ready) = @ARGV;
die "usage: $0 PORT PATH CONNS HOLD READY_FILE\n" unless defined $ready;
my (@s, %buf);
for (1 .. $n) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
        or die "connect: $!\n";
    syswrite $s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    push @s, $s;
}
my $sel = IO::Select->new(@s);
my $t0 = time;
while ($sel->count && time - $t0 < 60) {
    for my $s ($sel->can_read(1)) {
        my $r = sysread $s, my $chunk, 65536;
        if (!$r) { $sel->remove($s); next }
        $buf{$s} .= $chunk;
        if ($buf{$s} =~ /^(.*?\r\n\r\n)/s) {
            my ($cl) = $1 =~ /^Content-Length:\s*(\d+)/mi;
            $sel->remove($s) if length($buf{$s}) >= length($1) + ($cl // 0);
        }
    }
}
open my $f, '>', $ready or die "$ready: $!\n";
close $f;
sleep $hold;
