package APX::Bench;
# What every bench script needs: the open-files limit raised before it
# starts (a re-exec under `ulimit -n`), files in and out, templates, free
# ports on 127.0.0.1, RSS of processes. Loopback only.
use strict;
use warnings;
use Cwd qw(abs_path);
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use Exporter 'import';
our @EXPORT_OK = qw(raise_nofile slurp spew fill free_port wait_port rss_kb);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# Re-runs the script ($0 with @args) under `ulimit -n $n` (or the hard
# limit when $n is above it), once: the shell's ulimit raises the soft
# limit for the script and every server it starts.
sub raise_nofile {
    my ($n, @args) = @_;
    return if $ENV{APX_BENCH_ULIMIT};
    $ENV{APX_BENCH_ULIMIT} = 1;
    exec '/bin/sh', '-c', "ulimit -n $n 2>/dev/null || ulimit -n \$(ulimit -Hn); exec \"\$0\" \"\$@\"",
        $^X, abs_path($0), @args;
    die "exec: $!";
}

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    my $c = <$fh>;
    return $c // '';
}

sub spew {
    my ($f, $c) = @_;
    open my $fh, '>', $f or die "$f: $!";
    print $fh $c;
    close $fh or die "$f: $!";
}

# @NAME@ in $text replaced by $v{NAME}; a name without a value dies.
sub fill {
    my ($text, %v) = @_;
    $text =~ s/\@([A-Z_]+)\@/exists $v{$1} ? $v{$1} : die "template: no value for \@$1\@\n"/ge;
    return $text;
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
                                  Listen => 1, ReuseAddr => 1) or die "free_port: $!";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub wait_port {
    my ($port, $secs) = @_;
    my $end = time + $secs;
    while (time < $end) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1);
        if ($s) { close $s; return 1 }
        sleep 0.05;
    }
    return 0;
}

# The summed VmRSS (KB) of the given pids.
sub rss_kb {
    my $t = 0;
    for my $p (@_) { $t += $1 if slurp("/proc/$p/status") =~ /VmRSS:\s+(\d+)/ }
    return $t;
}

1;
