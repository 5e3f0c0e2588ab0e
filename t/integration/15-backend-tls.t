#!/usr/bin/perl
# TLS to backends (https://, issue 13 item 5) against real TLS backends
# (APX::BackendTLS: IO::Socket::SSL in front of the scripted backend) with
# certificates made here by the openssl CLI: a CA and a server certificate
# it signed for localhost / 127.0.0.1, and a self-signed one. Asserted on
# what the backends saw (their request and handshake logs), the client's
# bytes, the module's figures and the error log — never on timing:
#   - GET and POST bodies through https:// byte-exact (1 MiB each way, a
#     chunked 3 MiB stream that takes the stream turn);
#   - keep-alive: the backend sees fewer TLS connections than requests;
#   - resumption: new connections after the pool expired, and every
#     connection of a mapping without a pool (max=0), resume the session
#     (the backend says so per handshake; BackendTLSResumed counts them);
#   - SNI is the URL's host (none for an IP literal), or tlsname=;
#   - a wrong expected name (tlsname=), an unknown CA (the system store), a
#     self-signed certificate: 502 and one log line with OpenSSL's reason,
#     nothing pooled (every request makes a new handshake); the
#     self-signed one works with tlsca= pointing at it, or tlsverify=off;
#   - a backend that accepts TCP and never answers the ClientHello: the
#     request is parked (ParkedRequests) while others flow, and gets 504 at the
#     connect timeout with its log line;
#   - configtest refuses tls*= on http://, an unreadable tlsca=, upgrade=
#     to an https:// backend.
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

my $t_start = time;
my $d = tempdir('apx-tls-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{APX_KEEP});
chmod 0755, $d;
my $c = APX::BackendTLS::make_certs($d);

my $BIG = pattern_body(1024 * 1024);
my $STREAM = pattern_body(3 * 1024 * 1024);

sub handler {
    my ($req) = @_;
    my $t = $req->{target};
    my $resp = \&APX::Backend::response;
    return $resp->(200, $BIG) if $t =~ m{/big$};
    if ($t =~ m{/stream$}) {
        # chunked, no length: relayed as a stream, 64 KiB chunks
        my $out = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (my $o = 0; $o < length $STREAM; $o += 65536) {
            my $part = substr($STREAM, $o, 65536);
            $out .= sprintf("%x\r\n", length $part) . $part . "\r\n";
        }
        return $out . "0\r\n\r\n";
    }
    return $resp->(200, "method=$req->{method} target=$t len=" . length($req->{body})
                        . ' md5=' . md5_hex($req->{body}) . "\n",
                   'X-Host' => $req->{hdr}{host} // '');
}

my $tb = APX::BackendTLS->new(cert => $c->{cert}, key => $c->{key}, handler => \&handler);
my $sb = APX::BackendTLS->new(cert => $c->{self_cert}, key => $c->{self_key}, handler => \&handler);
# takes the TCP connection, never says a word
my $hang = APX::Backend->new(on_accept => sub { [[sleep => 20]] });
# closes (close_notify + FIN) a connection idle for 1 s
my $ib = APX::BackendTLS->new(cert => $c->{cert}, key => $c->{key}, handler => \&handler,
                              idle_timeout => 1);
my ($tp, $sp, $hp, $ip) = ($tb->port, $sb->port, $hang->port, $ib->port);

my $h = APX::Httpd->new(conf => <<"EOF");
    AsyncProxyPass /tls/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca}
    AsyncProxyPass /name/ https://localhost:$tp/v1/ tlsca=$c->{ca}
    AsyncProxyPass /sni/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca} tlsname=localhost
    AsyncProxyPass /nopool/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca} max=0
    AsyncProxyPass /expire/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca} ttl=200ms
    AsyncProxyPass /wrongname/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca} tlsname=wrong.example
    AsyncProxyPass /systemca/ https://127.0.0.1:$tp/v1/
    AsyncProxyPass /self/ https://127.0.0.1:$sp/v1/
    AsyncProxyPass /selfca/ https://127.0.0.1:$sp/v1/ tlsca=$c->{self_cert}
    AsyncProxyPass /selfoff/ https://127.0.0.1:$sp/v1/ tlsverify=off
    AsyncProxyPass /hang/ https://127.0.0.1:$hp/ connecttimeout=2
    AsyncProxyPass /idle/ https://127.0.0.1:$ip/v1/ tlsca=$c->{ca} ttl=30s
EOF
$h->start;
my $port = $h->port;

sub count { return scalar @_ }
sub get { http_request($port, 'GET', $_[0]) }
sub new_handshakes {
    my ($b, $since) = @_;
    my @all = $b->handshakes;
    return @all[$since .. $#all];
}

# --- bodies byte-exact ---------------------------------------------------------
{
    my $r = get('/tls/a?x=1');
    is($r && $r->{status}, 200, 'GET through https:// answered 200');
    is($r && $r->{body}, "method=GET target=/v1/a?x=1 len=0 md5=" . md5_hex('') . "\n",
       'GET body byte-exact, target forwarded');
    my @hs = $tb->handshakes;
    ok(@hs && $hs[0]{ok}, 'the backend completed a TLS handshake');
    is($hs[0]{sni}, '', 'no SNI for an IP-literal host');

    $r = http_request($port, 'POST', '/tls/post', body => $BIG);
    is($r && $r->{body}, "method=POST target=/v1/post len=" . length($BIG) . ' md5='
       . md5_hex($BIG) . "\n", '1 MiB POST body reached the backend byte-exact over TLS');

    $r = get('/tls/big');
    ok($r && $r->{status} == 200 && $r->{body} eq $BIG, '1 MiB response body byte-exact over TLS');
    $r = get('/tls/stream');
    ok($r && $r->{status} == 200 && length($r->{body}) == length($STREAM) && $r->{body} eq $STREAM,
       'chunked 3 MiB stream byte-exact over TLS');
}

# --- keep-alive reuse ----------------------------------------------------------
{
    my $before = count($tb->handshakes);
    my $reqs_before = count($tb->requests);
    my $ok = 0;
    for my $i (1 .. 20) {
        my $r = get("/tls/ka$i");
        $ok++ if $r && $r->{status} == 200 && $r->{body} =~ m{target=/v1/ka$i };
    }
    is($ok, 20, '20 sequential requests answered');
    my @new = new_handshakes($tb, $before);
    my @reqs = $tb->requests;
    is(@reqs - $reqs_before, 20, 'the backend saw the 20 requests');
    cmp_ok(scalar @new, '<', 20, 'over fewer TLS connections than requests (' . scalar(@new) . ')');
    cmp_ok(scalar @new, '<=', 2, 'pooled TLS connections reused (at most 2 handshakes)');
    my %conns = map { $_->{conn_id} => 1 } @reqs[$reqs_before .. $#reqs];
    cmp_ok(scalar keys %conns, '<=', 2, 'requests shared backend connections');
}

# --- SNI -----------------------------------------------------------------------
{
    my $before = count($tb->handshakes);
    my $r = get('/name/n');
    is($r && $r->{status}, 200, 'https://localhost verifies against the DNS name');
    is($r && ($r->{headers}{'x-host'} // ''), "localhost:$tp", 'Host is the URL\'s');
    my @new = new_handshakes($tb, $before);
    is(@new && $new[-1]{sni}, 'localhost', 'SNI is the URL\'s host name');
    $before = count($tb->handshakes);
    $r = get('/sni/n');
    is($r && $r->{status}, 200, 'tlsname=localhost on an IP URL verifies');
    @new = new_handshakes($tb, $before);
    is(@new && $new[-1]{sni}, 'localhost', 'tlsname= is sent as SNI');
}

# --- resumption ------------------------------------------------------------------
{
    my $f0 = figures($port);
    my $before = count($tb->handshakes);
    my $ok = 0;
    for my $i (1 .. 5) {
        my $r = get("/nopool/r$i");
        $ok++ if $r && $r->{status} == 200;
    }
    is($ok, 5, 'max=0: 5 requests answered');
    my @new = new_handshakes($tb, $before);
    is(scalar @new, 5, 'max=0: one TLS connection per request');
    my $resumed = grep { $_->{reused} } @new;
    cmp_ok($resumed, '>=', 4, "max=0: the connections after the first resumed the session ($resumed of 5)");
    my $f1 = figures($port);
    cmp_ok(($f1->{BackendTLSResumed} // 0) - ($f0->{BackendTLSResumed} // 0), '>=', 4,
           'BackendTLSResumed counts them');
    cmp_ok(($f1->{BackendTLSHandshakes} // 0) - ($f0->{BackendTLSHandshakes} // 0), '>=', 5,
           'BackendTLSHandshakes counts every handshake');

    # the pool's connection expires (ttl=200ms): the next one resumes
    $before = count($tb->handshakes);
    my $r1 = get('/expire/1');
    sleep 0.5;
    my $r2 = get('/expire/2');
    ok($r1 && $r1->{status} == 200 && $r2 && $r2->{status} == 200, 'ttl=200ms: both answered');
    @new = new_handshakes($tb, $before);
    is(scalar @new, 2, 'the idle connection expired: a new one for the second');
    ok(@new == 2 && $new[1]{reused}, 'the new connection after the pool expiry resumed the session');
}

# --- a pooled connection the backend closed while idle -------------------------------
{
    my $r1 = get('/idle/1');
    # the backend sends close_notify and FIN after 1 s: the pooled
    # connection is readable; processing its records says it is closed
    wait_for(sub { grep { ($_->{closed_by} // '') eq 'timeout' } $ib->connections }, 5);
    my $f0 = figures($port);
    my $r2 = get('/idle/2');
    my $f1 = figures($port);
    ok($r1 && $r1->{status} == 200 && $r2 && $r2->{status} == 200, 'both answered');
    is(($f1->{BackendRetries} // 0) - ($f0->{BackendRetries} // 0), 0,
       'the closed TLS connection was not taken from the pool (no retry needed)');
    my @hs = $ib->handshakes;
    is(scalar @hs, 2, 'a new TLS connection for the second request');
    ok(@hs == 2 && $hs[1]{reused}, '... which resumed the session');
}

# --- refused certificates ----------------------------------------------------------
sub log_has { my ($re) = @_; my @l = grep { $_ =~ $re } split /\n/, $h->slurp_log; return scalar @l }
{
    my $before = count($tb->handshakes);
    my $r1 = get('/wrongname/x');
    my $r2 = get('/wrongname/y');
    is($r1 && $r1->{status}, 502, 'wrong expected name (tlsname=): 502');
    is($r2 && $r2->{status}, 502, '... again');
    # the backend logs a broken-off handshake once it has seen the alert
    wait_for(sub { count(new_handshakes($tb, $before)) >= 2 });
    my @new = new_handshakes($tb, $before);
    is(scalar @new, 2, 'nothing was pooled: a handshake for each request');
    ok(!grep({ $_->{ok} } @new), 'the backend saw the handshakes broken off');
    ok(wait_for(sub { log_has(qr/APX00135: TLS to backend 127\.0\.0\.1:$tp refused: certificate verification failed: hostname mismatch/) >= 2 }),
       'log line names the backend and the reason (hostname mismatch)');

    $r1 = get('/systemca/x');
    is($r1 && $r1->{status}, 502, 'a CA the system store does not know: 502');
    ok(wait_for(sub { log_has(qr/APX00135: .*127\.0\.0\.1:$tp refused: .*unable to get local issuer certificate/) }),
       'log line: unable to get local issuer certificate');

    $r1 = get('/self/x');
    is($r1 && $r1->{status}, 502, 'self-signed certificate: 502');
    ok(wait_for(sub { log_has(qr/APX00135: .*127\.0\.0\.1:$sp refused: .*self[- ]signed certificate/) }),
       'log line: self-signed certificate');
    $r1 = get('/selfca/x');
    is($r1 && $r1->{status}, 200, 'self-signed certificate trusted with tlsca= pointing at it');
    $r1 = get('/selfoff/x');
    is($r1 && $r1->{status}, 200, 'self-signed certificate accepted with tlsverify=off');
}

# --- a backend that never answers the ClientHello -------------------------------------
{
    my $s = connect_to($port);
    send_raw($s, request_bytes($port, 'GET', '/hang/x'));
    my $t0 = time;
    # ParkedRequests: proxied requests in flight that parked (ParkedNow
    # would also count connections parked in a lingering close)
    my $parked = wait_for(sub { my $f = figures($port);
                                ($f->{ParkedRequests} // 0) >= 1 && ($f->{ParkedNow} // 0) >= 1 }, 5);
    ok($parked, 'the request waiting for the handshake is parked (ParkedRequests >= 1)');
    my $ok = 0;
    for my $i (1 .. 5) {
        my $r = get("/tls/meanwhile$i");
        $ok++ if $r && $r->{status} == 200;
    }
    is($ok, 5, 'other requests flow meanwhile');
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 15);
    is($r && $r->{status}, 504, 'the silent handshake ends in 504 at the connect timeout');
    ok(wait_for(sub { log_has(qr/APX00137: TLS handshake with backend 127\.0\.0\.1:$hp timed out after 2000 ms/) }),
       'log line for the handshake timeout');
    close $s;
}

# --- configtest -----------------------------------------------------------------------
{
    for my $case (["AsyncProxyPass /p/ http://127.0.0.1:$tp/ tlsca=$c->{ca}", qr/tlsca=\S+' is for an https:\/\/ backend/],
                  ["AsyncProxyPass /p/ https://127.0.0.1:$tp/ tlsca=$d/nonexistent.pem", qr/cannot read the CA certificates of tlsca=/],
                  ["AsyncProxyPass /p/ https://127.0.0.1:$tp/ tlsverify=maybe", qr/invalid value 'maybe' for option tlsverify=/],
                  ["AsyncProxyPass /p/ https://127.0.0.1:$tp/ upgrade=websocket", qr/upgrade= is not supported to an https:\/\/ backend/]) {
        my $x = APX::Httpd->new(conf => "    $case->[0]\n");
        my ($rc, $out) = $x->configtest;
        isnt($rc, 0, "configtest fails: $case->[0]");
        like($out, $case->[1], '... naming the problem');
    }
}

my @bad = $h->error_lines(qr/APX0013[57]: /, qr/AH01084|AH00898|AH01097/);
is_deeply(\@bad, [], 'no unexpected error-log lines') or diag join "\n", @bad;

$h->stop;

# --- the worker MPM: the same steps, polled in place on the request's thread -------------
{
    my $w = APX::Httpd->new(mpm => 'worker', conf => <<"EOF");
    AsyncProxyPass /tls/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca}
    AsyncProxyPass /nopool/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca} max=0
    AsyncProxyPass /wrongname/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca} tlsname=wrong.example
EOF
    $w->start;
    my $wp = $w->port;
    my $r = http_request($wp, 'POST', '/tls/wpost', body => $BIG);
    is($r && $r->{body}, "method=POST target=/v1/wpost len=" . length($BIG) . ' md5='
       . md5_hex($BIG) . "\n", 'worker MPM: 1 MiB POST byte-exact over TLS');
    $r = http_request($wp, 'GET', '/tls/big');
    ok($r && $r->{status} == 200 && $r->{body} eq $BIG, 'worker MPM: 1 MiB response byte-exact');
    my $before = count($tb->handshakes);
    my $ok = 0;
    for my $i (1 .. 3) {
        $r = http_request($wp, 'GET', "/nopool/w$i");
        $ok++ if $r && $r->{status} == 200;
    }
    my @new = new_handshakes($tb, $before);
    is($ok, 3, 'worker MPM: max=0 requests answered');
    cmp_ok(scalar(grep { $_->{reused} } @new), '>=', 2, 'worker MPM: sessions resumed');
    $r = http_request($wp, 'GET', '/wrongname/x');
    is($r && $r->{status}, 502, 'worker MPM: wrong name refused with 502');
    my @wbad = $w->error_lines(qr/APX00135: /);
    is_deeply(\@wbad, [], 'worker MPM: no unexpected error-log lines') or diag join "\n", @wbad;
    $w->stop;
}

# --- mod_ssl in the same process: TLS from the client and to the backend ---------------
{
    my $s = APX::Httpd->new(tls => 1, conf => <<"EOF");
    AsyncProxyPass /tls/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca}
    AsyncProxyPass /nopool/ https://127.0.0.1:$tp/v1/ tlsca=$c->{ca} max=0
EOF
    $s->start;
    my $r = http_request($s->port, 'POST', '/tls/both', body => $BIG, tls => 1);
    is($r && $r->{body}, "method=POST target=/v1/both len=" . length($BIG) . ' md5='
       . md5_hex($BIG) . "\n", 'mod_ssl front + TLS backend: 1 MiB POST byte-exact');
    my $before = count($tb->handshakes);
    my $ok = 0;
    for my $i (1 .. 3) {
        $r = http_request($s->port, 'GET', "/nopool/s$i", tls => 1);
        $ok++ if $r && $r->{status} == 200;
    }
    is($ok, 3, 'mod_ssl front: requests answered');
    cmp_ok(scalar(grep { $_->{reused} } new_handshakes($tb, $before)), '>=', 2,
           'mod_ssl front: backend sessions resumed');
    my @sbad = $s->error_lines;
    is_deeply(\@sbad, [], 'mod_ssl front: no error-log lines') or diag join "\n", @sbad;
    $s->stop;
}

$_->stop for $tb, $sb, $hang, $ib;
diag sprintf('15-backend-tls.t: %.1f s', time - $t_start);
done_testing;
