package APX::Httpd;

# A real httpd (Debian's /usr/sbin/apache2) with the built module, in a
# self-contained directory: own ServerRoot, PidFile, logs, a loopback port.
#
#   my $h = APX::Httpd->new(mpm => 'event', conf => "...", threads => 25);
#   $h->start;  $h->url('/x');  $h->graceful;  $h->stop;
#   my @bad = $h->error_lines;       # error-log lines at level error or above
#
# Why not Apache::Test: our tests need several servers per file with
# different MPMs and limits, signal-driven lifecycles (graceful,
# graceful-stop, stop) observed from outside, and the error log checked line
# by line; Apache::Test generates one server per test run from its own
# templates. This harness writes the whole config itself, which is also what
# an administrator reads.
#
# Every process it starts is stopped by pid (from the PidFile); nothing is
# killed by name.

use strict;
use warnings;
use File::Temp qw(tempdir);
use File::Spec;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use POSIX ();
use Cwd qw(abs_path);

our $APACHE = $ENV{APX_HTTPD} || '/usr/sbin/apache2';
our $MODDIR = '/usr/lib/apache2/modules';
my $TOP = abs_path(File::Spec->catdir((File::Spec->splitpath(abs_path(__FILE__)))[1], '..', '..', '..'));

sub top { $TOP }

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "free_port: $!";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        mpm        => $o{mpm} || 'event',
        threads    => $o{threads} || 25,
        servers    => $o{servers} || 1,
        server_limit => $o{server_limit} || 2,
        factor     => $o{factor} // 400,
        conf       => $o{conf} // '',
        global     => $o{global} // '',
        modules    => $o{modules} || [],
        keepalive_timeout => $o{keepalive_timeout} || 5,
        timeout    => $o{timeout} || 30,
        module_so  => $o{module_so} || $ENV{APX_MODULE_SO} || "$TOP/build/mod_asyncproxy.so",
        loglevel   => $o{loglevel} || 'warn asyncproxy:info',
        tls        => $o{tls} || 0,
        # open-files limit apache2 starts with (`ulimit -n`); a low one
        # makes the child run out of file descriptors (24-out-of-fds.t)
        nofile     => $o{nofile} || 20000,
        # extra environment for apache2: { NAME => value }, plus
        # $ENV{APX_HTTPD_ENV} ("NAME=value NAME2=value2", e.g. LD_PRELOAD and
        # ASAN_OPTIONS for scripts/itest-asan.sh); the option wins
        env        => { env_from_string($ENV{APX_HTTPD_ENV}), %{ $o{env} || {} } },
    }, $class;
    $self->{dir} = tempdir('apx-httpd-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{APX_KEEP});
    chmod 0755, $self->{dir};
    mkdir "$self->{dir}/$_" for qw(logs htdocs cores);
    chmod 0777, "$self->{dir}/cores";
    $self->{port} = $o{port} || free_port();
    $self->write_conf;
    return $self;
}

sub dir  { $_[0]{dir} }
sub port { $_[0]{port} }
sub url  { my ($s, $p) = @_; ($s->{tls} ? 'https' : 'http') . "://127.0.0.1:$s->{port}" . ($p // '/') }
sub error_log { "$_[0]{dir}/logs/error_log" }
sub access_log { "$_[0]{dir}/logs/access_log" }
sub conf_file { "$_[0]{dir}/httpd.conf" }

sub write_file {
    my ($self, $rel, $content) = @_;
    my $f = "$self->{dir}/$rel";
    open my $fh, '>', $f or die "$f: $!";
    binmode $fh;
    print $fh $content;
    close $fh;
    return $f;
}

sub write_conf {
    my ($self) = @_;
    my $d = $self->{dir};
    my $mpm = $self->{mpm};
    my $threads = $self->{threads};
    my $maxw = $threads * $self->{server_limit};
    my @mods = ("mpm_$mpm", qw(authz_core mime status dir alias headers), @{$self->{modules}});
    push @mods, 'ssl', 'socache_shmcb' if $self->{tls};
    my %seen;
    my $load = join '', map { "LoadModule ${_}_module $MODDIR/mod_$_.so\n" } grep { !$seen{$_}++ } @mods;
    my $user = $> == 0 ? "User www-data\nGroup www-data\n" : '';
    my $mpmconf = $mpm eq 'prefork'
        ? "StartServers 2\nMinSpareServers 2\nMaxSpareServers 4\nMaxRequestWorkers 20\n"
        : "ServerLimit $self->{server_limit}\nStartServers $self->{servers}\n"
          . "ThreadsPerChild $threads\nThreadLimit $threads\nMaxRequestWorkers $maxw\n"
          . "MinSpareThreads 1\nMaxSpareThreads $maxw\n"
          . ($mpm eq 'event' ? "AsyncRequestWorkerFactor $self->{factor}\n" : '');
    my $tls = '';
    if ($self->{tls}) {
        $self->make_cert;
        $tls = "SSLEngine on\nSSLCertificateFile $d/server.crt\nSSLCertificateKeyFile $d/server.key\n";
    }
    $self->write_file('httpd.conf', <<"EOF");
# Written by t/lib/APX/Httpd.pm — a self-contained test server.
ServerRoot "$d"
ServerName 127.0.0.1
PidFile "$d/logs/httpd.pid"
DefaultRuntimeDir "$d/logs"
Mutex file:$d/logs default
ErrorLog "$d/logs/error_log"
LogLevel $self->{loglevel}
CoreDumpDirectory "$d/cores"
$user$load
LoadModule asyncproxy_module $self->{module_so}
Listen 127.0.0.1:$self->{port}
$mpmconf
Timeout $self->{timeout}
KeepAlive On
KeepAliveTimeout $self->{keepalive_timeout}
MaxKeepAliveRequests 0
LogFormat "%h %l %u %t \\"%r\\" %>s %b %D %{c}L" apx
CustomLog "$d/logs/access_log" apx
TypesConfig /etc/mime.types
DocumentRoot "$d/htdocs"
<Directory "$d/htdocs">
    Require all granted
</Directory>
<Location /server-status>
    SetHandler server-status
</Location>
<Location /apx-status>
    SetHandler asyncproxy-status
</Location>
$self->{global}
<VirtualHost 127.0.0.1:$self->{port}>
    ServerName 127.0.0.1
$tls$self->{conf}
</VirtualHost>
EOF
}

sub make_cert {
    my ($self) = @_;
    my $d = $self->{dir};
    return if -f "$d/server.crt";
    system("openssl req -x509 -newkey rsa:2048 -nodes -keyout $d/server.key "
         . "-out $d/server.crt -days 2 -subj /CN=127.0.0.1 >/dev/null 2>&1") == 0
        or die "openssl failed";
    chmod 0644, "$d/server.key";
}

# "A=1 B=x" -> (A => 1, B => 'x'); values cannot hold spaces
sub env_from_string {
    my ($str) = @_;
    return () unless defined $str && length $str;
    return map { /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/ ? ($1 => $2) : () } split ' ', $str;
}

sub run_apache {
    my ($self, @args) = @_;
    my $env = join '', map {
        (my $v = $self->{env}{$_}) =~ s/'/'\\''/g;
        "$_='$v' "
    } sort keys %{ $self->{env} || {} };
    my $cmd = "ulimit -n $self->{nofile} 2>/dev/null; ulimit -c unlimited 2>/dev/null; "
            . ($env ne '' ? "env $env" : '')
            . "$APACHE -f " . $self->conf_file . " @args 2>&1";
    my $out = `$cmd`;
    return ($? >> 8, $out);
}

# apachectl configtest equivalent: (exit status, output)
sub configtest { $_[0]->run_apache('-t') }

sub pid {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/logs/httpd.pid" or return;
    my $p = <$fh>;
    close $fh;
    return unless defined $p;
    chomp $p;
    return $p =~ /^\d+$/ ? $p : undef;
}

sub alive { my $p = $_[0]->pid; return $p && kill(0, $p) }

sub wait_port {
    my ($self, $secs) = @_;
    my $end = time + ($secs || 10);
    while (time < $end) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port}, Timeout => 1);
        if ($s) { close $s; return 1 }
        sleep 0.05;
    }
    return 0;
}

sub start {
    my ($self) = @_;
    my ($rc, $out) = $self->run_apache('-k', 'start');
    die "apache2 -k start failed ($rc): $out" if $rc;
    my $end = time + 10;
    sleep 0.05 until $self->pid || time > $end;
    die "no pid file; error log:\n" . $self->slurp_log unless $self->pid;
    $self->{started} = 1;
    $self->wait_port(10) or die "port $self->{port} not answering; log:\n" . $self->slurp_log;
    $self->wait_children;
    return $self;
}

# pids of the children (processes whose parent is the main httpd pid)
sub children {
    my ($self) = @_;
    my $ppid = $self->pid or return ();
    my @kids;
    opendir my $dh, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $st = <$fh>;
        close $fh;
        next unless $st && $st =~ /\)\s+\S+\s+(\d+)/;
        push @kids, $p if $1 == $ppid;
    }
    closedir $dh;
    my @sorted = sort { $a <=> $b } @kids;
    return @sorted;
}

sub wait_children {
    my ($self) = @_;
    my $want = $self->{mpm} eq 'prefork' ? 1 : $self->{servers};
    my $end = time + 10;
    while (time < $end) {
        my @kids = $self->children;
        last if @kids >= $want;
        sleep 0.05;
    }
    # let child_init run and log
    sleep 0.2;
}

sub threads_of { my ($self, $pid) = @_; opendir my $d, "/proc/$pid/task" or return 0; my $n = grep { /^\d+$/ } readdir $d; return $n }
sub fds_of     { my ($self, $pid) = @_; opendir my $d, "/proc/$pid/fd" or return 0; my $n = grep { /^\d+$/ } readdir $d; return $n }

sub signal_wait {
    my ($self, $sig, $secs) = @_;
    my $pid = $self->pid or return 1;
    kill $sig, $pid;
    my $end = time + ($secs || 15);
    while (time < $end) {
        return 1 unless kill 0, $pid;
        # reap if it is ours (it is not: apache2 -k start daemonises)
        sleep 0.05;
    }
    return 0;
}

sub stop {
    my ($self) = @_;
    return 1 unless $self->{started};
    my $pid = $self->pid;
    my $ok = $self->signal_wait('TERM', 15);
    if (!$ok && $pid) { kill 'KILL', $pid; }
    $self->{started} = 0;
    return $ok;
}

sub graceful_stop {
    my ($self, $secs) = @_;
    my $ok = $self->signal_wait('WINCH', $secs || 20);
    $self->{started} = 0 if $ok;
    return $ok;
}

# graceful restart: returns once a new generation's child answers
sub graceful {
    my ($self) = @_;
    my $pid = $self->pid or die "not running";
    my $gen_before = () = $self->slurp_log =~ /resuming normal operations/g;
    kill 'USR1', $pid;
    my $end = time + 15;
    while (time < $end) {
        my $n = () = $self->slurp_log =~ /resuming normal operations/g;
        last if $n > $gen_before;
        sleep 0.05;
    }
    $self->wait_port(10);
    sleep 0.3;
}

sub slurp_log {
    my ($self, $file) = @_;
    $file ||= $self->error_log;
    open my $fh, '<', $file or return '';
    local $/;
    my $c = <$fh>;
    close $fh;
    return $c // '';
}

# Lines at level error or above, or any crash sign; minus the ones that
# match one of the given expected patterns.
sub error_lines {
    my ($self, @expected) = @_;
    my @bad;
    for my $l (split /\n/, $self->slurp_log) {
        next unless $l =~ /:(error|crit|alert|emerg)\]/ || $l =~ /exit signal|Segmentation|AddressSanitizer|core dumped/i;
        next if grep { $l =~ $_ } @expected;
        push @bad, $l;
    }
    opendir my $d, "$self->{dir}/cores";
    push @bad, map { "core file: $_" } grep { !/^\./ } readdir $d if $d;
    return @bad;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop if $self->{started};
}

1;
