package APX::Bench;
# What every bench script needs: the open-files limit raised before it
# starts (a re-exec under `ulimit -n`), files in and out, templates, free
# ports on 127.0.0.1, RSS of processes, where things are. Loopback only.
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);
use Exporter 'import';
our @EXPORT_OK = qw(raise_nofile slurp spew fill free_port wait_port rss_kb
                    children_of tree spawn stop_pid stop_all
                    $BENCH $TOP $BIN $APACHE $NGINX $MODULE_SO);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# Where things are: bench/, the tree's top, the helpers `make -C bench`
# builds, the servers (APX_HTTPD: another httpd) and the module under test
# (APX_MODULE_SO: another build of it).
our $BENCH = dirname(dirname(dirname(abs_path(__FILE__))));
our $TOP = dirname($BENCH);
our $BIN = "$TOP/build/bench";
our $APACHE = $ENV{APX_HTTPD} || '/usr/sbin/apache2';
our $NGINX = '/usr/sbin/nginx';
our $MODULE_SO = $ENV{APX_MODULE_SO} || "$TOP/build/mod_asyncproxy.so";

# Processes this script started (pid => 1), stopped at exit.
our %LIVE;
my $MAIN_PID = $$;

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

# ---- processes: started here, stopped by pid ----

sub children_of { my @k; push @k, split ' ', slurp($_) for glob "/proc/$_[0]/task/*/children"; @k }

# $pid and every descendant of it.
sub tree {
    my @all = ($_[0]);
    my @todo = children_of($_[0]);
    while (@todo) { my $p = shift @todo; push @all, $p; push @todo, children_of($p) }
    return @all;
}

# Runs @cmd with stdout and stderr to $out; the pid is stopped at exit.
sub spawn {
    my ($out, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) { open STDOUT, '>', $out; open STDERR, ">&", \*STDOUT; { exec @cmd } POSIX::_exit(127) }
    $LIVE{$pid} = 1;
    return $pid;
}

# SIGTERM, up to $secs (10) for it to go, then SIGKILL; descendants it
# left behind get SIGKILL too.
sub stop_pid {
    my ($pid, $secs) = @_;
    delete $LIVE{$pid} if $pid;
    return unless $pid && kill 0, $pid;
    my @kids = tree($pid);
    kill 'TERM', $pid;
    my $end = time + ($secs // 10);
    while (time < $end) { last if waitpid($pid, WNOHANG) == $pid || !kill 0, $pid; sleep 0.05 }
    kill 'KILL', $pid if kill 0, $pid;
    waitpid $pid, WNOHANG;
    kill 'KILL', grep { $_ != $pid && kill 0, $_ } @kids;
}

sub stop_all { return unless $$ == $MAIN_PID; stop_pid($_) for keys %LIVE }
$SIG{INT} = $SIG{TERM} = sub { stop_all(); exit 130 };
END { stop_all() }

1;
