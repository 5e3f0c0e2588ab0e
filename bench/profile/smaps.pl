#!/usr/bin/perl
# bench/profile/smaps.pl PID [STACK_KB] — resident kB of a process by kind of
# mapping, from /proc/PID/smaps: coroutine stacks (STACK_KB rw-p mappings
# right above a 4 KB PROT_NONE guard, 128 by default), thread stacks (8 MB
# after a guard), [heap], other anonymous memory (APR pool blocks are mmap'd
# on Debian, glibc arenas), file mappings. See bench/PROFILE.md.
use strict;
use warnings;
no warnings 'portable';     # 64-bit addresses through hex()

my ($pid, $stk) = @ARGV;
die "usage: $0 PID [STACK_KB]\n" unless $pid;
$stk //= 128;
open my $fh, '<', "/proc/$pid/smaps" or die "$pid: $!\n";
my (@v, $cur);
while (<$fh>) {
    if (/^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/) {
        $cur = { lo => hex $1, hi => hex $2, perm => $3, name => $4, rss => 0 };
        push @v, $cur;
    }
    elsif (/^Rss:\s+(\d+)/) {
        $cur->{rss} = $1;
    }
}
my (%k, $nstk);
$nstk = 0;
for my $i (0 .. $#v) {
    my $m = $v[$i];
    my $kb = ($m->{hi} - $m->{lo}) / 1024;
    my $prev = $i ? $v[$i - 1] : undef;
    my $guarded = $prev && $prev->{perm} eq '---p' && $prev->{hi} == $m->{lo};
    my $kind;
    if ($m->{name} eq '[heap]') { $kind = 'heap' }
    elsif ($m->{name} =~ /^\[stack/) { $kind = 'main-stack' }
    elsif ($m->{name} ne '') { $kind = 'file' }
    elsif ($m->{perm} eq 'rw-p' && $kb == $stk && $guarded
           && $prev->{hi} - $prev->{lo} == 4096) { $kind = 'coro-stack'; $nstk++ }
    elsif ($m->{perm} eq 'rw-p' && $kb == 8192 && $guarded) { $kind = 'thread-stack' }
    else { $kind = 'anon' }
    $k{$kind} += $m->{rss};
}
my $tot = 0;
$tot += $_ for values %k;
printf "total=%d %s coro_stacks=%d\n", $tot, join(' ', map { "$_=$k{$_}" } sort keys %k), $nstk;
