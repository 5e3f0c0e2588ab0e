#!/usr/bin/perl
# Unix-socket backends (mod_proxy's "unix:/path|http://host/" form, issue 13
# item 5) against a real backend on a Unix socket (APX::BackendUnix), and a
# balancer whose members are an https:// origin and a unix: one. Asserted on
# what the backends saw and the client's bytes:
#   - GET and POST through unix: byte-exact, Host from the part after '|',
#     the base path of the URL;
#   - keep-alive: the socket's connections are reused;
#   - a socket nobody listens on: 502 with the log line naming unix:PATH;
#   - a balancer (wrr 1:1) with an https:// member and a unix: member: both
#     take half the requests, each with its own Host, POSTs byte-exact;
#   - configtest refuses a relative socket path and a unix: URL without
#     http:// after '|'.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::BackendTLS;
use APX::Client qw(:all);
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);
use IO::Socket::UNIX;
use IO::Select;
use Socket qw(PF_UNIX SOCK_STREAM pack_sockaddr_un);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);

my $t_start = time;
my $d = tempdir('apx-unix-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{APX_KEEP});
chmod 0755, $d;
my $c = APX::BackendTLS::make_certs($d);

sub handler {
    my ($req) = @_;
    return APX::Backend::response(200, "via=$_[1]{via} method=$req->{method} target=$req->{target} "
                                       . "host=" . ($req->{hdr}{host} // '') . ' len='
                                       . length($req->{body}) . ' md5=' . md5_hex($req->{body}) . "\n");
}
my $u = APX::BackendUnix->new(path => "$d/app.sock", handler => sub { $_[1]{via} = 'unix'; handler(@_) });
my $tb = APX::BackendTLS->new(cert => $c->{cert}, key => $c->{key},
                              handler => sub { $_[1]{via} = 'tls'; handler(@_) });
my $sock = $u->path;
my $tp = $tb->port;

my $h = APX::Httpd->new(conf => <<"EOF");
    AsyncProxyPass /u/ unix:$sock|http://app.local/v1/
    AsyncProxyPass /gone/ unix:$d/nobody.sock|http://app.local/
    AsyncProxyPass /full/ unix:$d/full.sock|http://full.local/ connecttimeout=10
    AsyncProxyPass /fullshort/ unix:$d/full.sock|http://full.local/ connecttimeout=1
    AsyncProxyPass /mix/ balancer://mix/api/
    <AsyncProxyBalancer mix>
        AsyncProxyMember https://127.0.0.1:$tp tlsca=$c->{ca}
        AsyncProxyMember unix:$sock|http://member.local
        AsyncProxyBalancerSet lbmethod=wrr
    </AsyncProxyBalancer>
EOF
$h->start;
my $port = $h->port;
my $BODY = pattern_body(300 * 1024);

# --- a unix: mapping -----------------------------------------------------------
{
    my $r = http_request($port, 'GET', '/u/a?q=1');
    is($r && $r->{status}, 200, 'GET through unix: answered 200');
    is($r && $r->{body}, "via=unix method=GET target=/v1/a?q=1 host=app.local len=0 md5="
       . md5_hex('') . "\n", 'byte-exact; Host is the part after |, the base path kept');
    $r = http_request($port, 'POST', '/u/p', body => $BODY);
    is($r && $r->{body}, "via=unix method=POST target=/v1/p host=app.local len=" . length($BODY)
       . ' md5=' . md5_hex($BODY) . "\n", '300 KiB POST body byte-exact through the Unix socket');

    my $before = () = $u->requests;
    my $ok = 0;
    for my $i (1 .. 10) {
        $r = http_request($port, 'GET', "/u/k$i");
        $ok++ if $r && $r->{status} == 200 && $r->{body} =~ m{target=/v1/k$i };
    }
    is($ok, 10, '10 sequential requests answered');
    my @reqs = ($u->requests)[$before .. $before + 9];
    my %conns = map { $_->{conn_id} => 1 } grep { defined } @reqs;
    cmp_ok(scalar keys %conns, '<=', 2, 'keep-alive: the Unix-socket connections were reused ('
           . scalar(keys %conns) . ' for 10 requests)');
}

# --- nobody listening --------------------------------------------------------------
{
    my $r = http_request($port, 'GET', '/gone/x');
    is($r && $r->{status}, 502, 'a socket nobody listens on: 502');
    ok(wait_for(sub { $h->slurp_log =~ m{APX00100: connect to backend unix:$d/nobody\.sock failed} }),
       'log line names unix:PATH');
}

# --- a full backlog: connect() says EAGAIN; parked and tried again -------------------
{
    my $path = "$d/full.sock";
    my $ls = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $path, Listen => 1)
        or die "listen $path: $!";
    chmod 0666, $path;
    # fill the backlog with connections nobody accepts, until EAGAIN
    my @fill;
    my $fill = sub {
        for (1 .. 20) {
            socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die;
            fcntl($s, F_SETFL, fcntl($s, F_GETFL, 0) | O_NONBLOCK);
            if (connect($s, pack_sockaddr_un($path))) { push @fill, $s; next }
            last if $!{EAGAIN};
            die "fill connect: $!";
        }
    };
    $fill->();
    cmp_ok(scalar @fill, '>=', 1, 'backlog filled (' . scalar(@fill) . ' queued connections)');

    my $c1 = connect_to($port);
    send_raw($c1, request_bytes($port, 'GET', '/full/x'));
    ok(wait_for(sub { my $f = figures($port);
                      ($f->{ParkedRequests} // 0) >= 1 && ($f->{ParkedNow} // 0) >= 1 }, 5),
       'the request whose connect() says EAGAIN is parked');
    my $r = http_request($port, 'GET', '/u/meanwhile');
    is($r && $r->{status}, 200, 'other requests flow meanwhile');
    # free the backlog: the parked connect gets in on a later try
    my $sel = IO::Select->new($ls);
    my $n = @fill;
    for (1 .. $n) { my $a = $ls->accept; close $a if $a }
    close $_ for @fill;
    @fill = ();
    my $got;
    for (1 .. 100) {
        last unless $sel->can_read(0.1);
        my $a = $ls->accept or next;
        my $buf = '';
        my $as = IO::Select->new($a);
        while ($as->can_read(2)) {
            last unless sysread($a, $buf, 4096, length $buf);
            last if $buf =~ /\r\n\r\n/;
        }
        if ($buf =~ m{^GET /x HTTP/1\.1\r\n}) {
            $got = $buf;
            send_raw($a, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfrom-full");
            close $a;
            last;
        }
        close $a;
    }
    like($got // '', qr/\r\nHost: full\.local\r\n/i, 'the retried connect reached the socket');
    my $buf = '';
    $r = read_response($c1, \$buf, timeout => 10);
    is($r && $r->{status}, 200, 'and the request was answered');
    is($r && $r->{body}, 'from-full', '... with the backend\'s body');
    close $c1;

    # full until the connect timeout: 504
    $fill->();
    $r = http_request($port, 'GET', '/fullshort/y');
    is($r && $r->{status}, 504, 'a backlog full until the connect timeout: 504');
    ok(wait_for(sub { $h->slurp_log =~ m{APX00101: connect to backend unix:\Q$path\E timed out after 1000 ms} }),
       'log line: connect timed out');
    close $_ for @fill;
    close $ls;
}

# --- a balancer with an https:// and a unix: member ------------------------------------
{
    my ($ub, $tbb) = (scalar(() = $u->requests), scalar(() = $tb->requests));
    my %via;
    my $ok = 0;
    for my $i (1 .. 10) {
        my $r = http_request($port, 'POST', "/mix/m$i", body => "b$i" x 100);
        next unless $r && $r->{status} == 200;
        my ($via, $host) = $r->{body} =~ /^via=(\w+) .* host=(\S+) /;
        $ok++ if $r->{body} =~ m{target=/api/m$i } && $r->{body} =~ / md5=\Q${\ md5_hex("b$i" x 100)}\E$/m;
        $via{$via}{$host}++;
    }
    is($ok, 10, 'balancer: 10 POSTs answered byte-exact');
    is($via{tls}{"127.0.0.1:$tp"}, 5, 'the https:// member took half, with its Host');
    is($via{unix}{'member.local'}, 5, 'the unix: member took half, with its Host');
    my $st = http_request($port, 'GET', '/apx-status');
    like($st && $st->{body}, qr{AsyncProxyMember: balancer=mix index=0 url=https://127\.0\.0\.1:$tp },
         'status page names the https:// member');
    like($st && $st->{body}, qr{AsyncProxyMember: balancer=mix index=1 url=unix:\Q$sock\E\|http://member\.local },
         'status page names the unix: member');
}

# --- configtest -------------------------------------------------------------------------
{
    for my $case (["AsyncProxyPass /p/ unix:relative.sock|http://x/", qr/needs an absolute path/],
                  ["AsyncProxyPass /p/ unix:/run/x.sock|ftp://x/", qr/spoken to in http:\/\//],
                  ["AsyncProxyPass /p/ unix:/run/x.sock|http://x/ tlsverify=off", qr/is for an https:\/\/ backend/]) {
        my $x = APX::Httpd->new(conf => "    $case->[0]\n");
        my ($rc, $out) = $x->configtest;
        isnt($rc, 0, "configtest fails: $case->[0]");
        like($out, $case->[1], '... naming the problem');
    }
}

my @bad = $h->error_lines(qr/APX00100: connect to backend unix:\Q$d\E\/nobody\.sock/,
                          qr/APX00101: connect to backend unix:\Q$d\E\/full\.sock timed out/);
is_deeply(\@bad, [], 'no unexpected error-log lines') or diag join "\n", @bad;

$h->stop;
$_->stop for $u, $tb;
diag sprintf('16-backend-unix.t: %.1f s', time - $t_start);
done_testing;
