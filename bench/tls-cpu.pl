#!/usr/bin/perl
# bench/tls-cpu.pl [SECONDS] — CPU per request of a proxy: TLS keep-alive to the backend vs plain, for
# mod_asyncproxy, mod_proxy_http + SSLProxyEngine, nginx proxy_ssl. Backend:
# nginx serving 1 KiB over http and https (keep-alive). wrk -c16 -t2 for $DUR s
# per row; CPU = utime+stime of every process of the proxy server, from
# /proc/PID/stat, before/after. Issue 13 row (c), part of `make bench`
# (`make -C bench tls`): the table goes to results/tls-latest.md and a dated
# copy.
use strict; use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use APX::Httpd; use APX::BackendTLS;
use File::Temp qw(tempdir); use POSIX ();
use Time::HiRes qw(sleep time);
my $DUR = $ARGV[0] || 8;
my $d = tempdir('tlsbench-XXXXXX', TMPDIR => 1, CLEANUP => 1); chmod 0755, $d;
my $c = APX::BackendTLS::make_certs($d);
mkdir "$d/www"; open my $f, '>', "$d/www/x" or die; print $f 'x' x 1024; close $f;
our (@NGINX, @ROWS);     # masters this script started, stopped by pid at exit
my $user = $> == 0 ? 'user www-data;' : '';
sub nginx_start {
    my ($name, $body) = @_;
    my $nd = "$d/$name"; mkdir $nd; mkdir "$nd/logs";
    open my $fh, '>', "$nd/nginx.conf" or die;
    print $fh "$user\nworker_processes 1;\npid $nd/nginx.pid;\nerror_log $nd/logs/error.log warn;\n"
            . "events { worker_connections 4096; }\nhttp { access_log off; keepalive_requests 1000000;\n$body\n}\n";
    close $fh;
    system("nginx -p $nd -c $nd/nginx.conf") == 0 or die "nginx $name";
    sleep 0.3;
    open my $p, '<', "$nd/nginx.pid" or die; my $pid = <$p>; chomp $pid;
    push @NGINX, $pid;
    return $pid;
}
END { kill 'QUIT', @NGINX if @NGINX }
my ($bp, $bs) = (APX::Httpd::free_port(), APX::Httpd::free_port());
my $bpid = nginx_start('backend', "server { listen 127.0.0.1:$bp; listen 127.0.0.1:$bs ssl; listen [::1]:$bs ssl; "
    . "ssl_certificate $c->{cert}; ssl_certificate_key $c->{key}; root $d/www; }");
sub pids_of {
    my ($ppid) = @_;
    my @p = ($ppid);
    opendir my $dh, '/proc';
    for my $x (grep { /^\d+$/ } readdir $dh) {
        open my $s, '<', "/proc/$x/stat" or next; my $st = <$s>;
        push @p, $x if $st && $st =~ /\)\s+\S+\s+(\d+)/ && $1 == $ppid;
    }
    return @p;
}
sub cpu {
    my $t = 0;
    for my $p (@_) {
        open my $s, '<', "/proc/$p/stat" or next; my $st = <$s>;
        my @f = split ' ', (split /\)\s+/, $st, 2)[1];
        $t += $f[11] + $f[12];
    }
    return $t / POSIX::sysconf(POSIX::_SC_CLK_TCK());
}
sub row {
    my ($label, $ppid, $url) = @_;
    system("wrk -t2 -c16 -d2s $url >/dev/null 2>&1");   # warm-up
    my @p = pids_of($ppid);
    my $c0 = cpu(@p);
    my $out = `wrk -t2 -c16 -d${DUR}s $url 2>&1`;
    my $c1 = cpu(@p);
    my ($n) = $out =~ /(\d+) requests in/;
    my ($non2xx) = $out =~ /Non-2xx or 3xx responses: (\d+)/;
    printf "%-40s %8d req  %7.0f req/s  %6.1f us CPU/req%s\n", $label, $n, $n / $DUR,
        ($c1 - $c0) / $n * 1e6, $non2xx ? "  NON-2XX $non2xx" : '';
    push @ROWS, sprintf "| %s | %.0f | %.1f | %d |\n", $label, $n / $DUR, ($c1 - $c0) / $n * 1e6, $non2xx // 0;
}
my $a = APX::Httpd->new(conf => "    AsyncProxyPass /plain/ http://127.0.0.1:$bp/\n"
    . "    AsyncProxyPass /tls/ https://127.0.0.1:$bs/ tlsca=$c->{ca}\n", loglevel => 'error');
$a->start;
row('mod_asyncproxy plain', $a->pid, $a->url('/plain/x'));
row('mod_asyncproxy TLS keep-alive', $a->pid, $a->url('/tls/x'));
my $fig = `curl -s ${\ $a->url('/apx-status')}`;
print join(' ', $fig =~ /^(AsyncProxyBackend(?:TLS\w+|Reused): \d+)$/mg), "\n";
$a->stop;
my $m = APX::Httpd->new(modules => ['proxy', 'proxy_http', 'ssl', 'socache_shmcb'], loglevel => 'error', conf =>
    "    ProxyPass /plain/ http://127.0.0.1:$bp/\n    SSLProxyEngine on\n"
  . "    SSLProxyCACertificateFile $c->{ca}\n    SSLProxyVerify require\n    SSLProxyCheckPeerName on\n"
  . "    ProxyPass /tls/ https://localhost:$bs/\n");
$m->start;
row('mod_proxy_http plain', $m->pid, $m->url('/plain/x'));
row('mod_proxy_http + SSLProxyEngine', $m->pid, $m->url('/tls/x'));
$m->stop;
my $np = APX::Httpd::free_port();
my $npid = nginx_start('front', "upstream bp { server 127.0.0.1:$bp; keepalive 64; } "
    . "upstream bs { server 127.0.0.1:$bs; keepalive 64; } "
    . "server { listen 127.0.0.1:$np; location /plain/ { proxy_pass http://bp/; proxy_http_version 1.1; proxy_set_header Connection \"\"; } "
    . "location /tls/ { proxy_pass https://bs/; proxy_http_version 1.1; proxy_set_header Connection \"\"; "
    . "proxy_ssl_verify on; proxy_ssl_trusted_certificate $c->{ca}; proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_ssl_session_reuse on; } }");
row('nginx 1 worker plain', $npid, "http://127.0.0.1:$np/plain/x");
row('nginx 1 worker proxy_ssl', $npid, "http://127.0.0.1:$np/tls/x");
kill 'QUIT', $npid, $bpid; @NGINX = (); sleep 0.5;
use POSIX qw(strftime);
my $stamp = strftime('%Y%m%d-%H%M%S', gmtime);
my $md = "# TLS to the backend: CPU per request (issue 13 row (c)), $stamp UTC\n\n"
       . "`bench/tls-cpu.pl $DUR`: a 1 KiB file from an nginx backend over http and over https (keep-alive),"
       . " wrk -t2 -c16 -d${DUR}s per row, CPU = utime+stime of every process of the proxy server"
       . " (one Apache child, or one nginx worker). One run, loopback, 2 shared cores.\n\n"
       . "| proxy, backend | req/s | CPU µs per request | non-2xx |\n|---|---|---|---|\n" . join('', @ROWS);
for my $f ("$FindBin::Bin/results/tls-latest.md", "$FindBin::Bin/results/tls-$stamp.md") {
    open my $o, '>', $f or die "$f: $!"; print $o $md; close $o;
}
print "\n$md";
