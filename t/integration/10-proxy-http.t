#!/usr/bin/perl
# HTTP/1.1 through the proxy, done right (RFC 9110 / 9112), under the event
# MPM (every request parked: AsyncProxyParkDelay 0) and the worker MPM (the
# synchronous driver): methods, request bodies (Content-Length, chunked,
# 100-continue, 8 MiB streamed), big downloads (32 MiB, Content-Length and
# chunked), bodiless responses (HEAD, 204, 304) framed exactly, interim
# responses (103 forwarded, a backend's 100 swallowed), trailers, hop-by-hop
# headers removed both ways, Via / X-Forwarded-*, Host, repeated headers,
# the target forwarded byte for byte, prefix mapping, exclusions, the
# <Location> form, AsyncProxyPassReverse, client keep-alive with static
# files in between and pipelining, backend keep-alive reuse.
#
# What the backend received is read from APX::Backend's log; what the client
# received is read with a raw socket (APX::Client), byte-exact.
#
# Encoded slashes: httpd refuses "%2F" in a URL-path with 404 before any
# handler runs (AllowEncodedSlashes Off, the default) — the proxy never sees
# such a request; with "AllowEncodedSlashes NoDecode" in the virtual host the
# target reaches the backend exactly as the client sent it. Both are checked.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use Time::HiRes qw(sleep time);

my $t_start = time;

# 8 MiB of bytes that do not repeat on any power-of-two boundary
my $BLOCK = join '', map { chr(($_ * 7 + ($_ >> 8) * 13 + 3) % 256) } 0 .. 65520;    # 65521: prime
my $BIG = substr($BLOCK x 129, 0, 8 * 1024 * 1024);
my $BIG_MD5 = md5_hex($BIG);

sub echo_body {
    my ($req) = @_;
    return "method=$req->{method} target=$req->{target} len=" . length($req->{body})
         . ' md5=' . md5_hex($req->{body}) . "\n";
}

sub backend_handler {
    my ($req, $conn) = @_;
    my ($m, $t) = @$req{qw(method target)};
    my $resp = \&APX::Backend::response;
    if ($t =~ m{^/v1/head}) {
        return "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Head: yes\r\n\r\n" . ($m eq 'HEAD' ? '' : 'h' x 1234);
    }
    return "HTTP/1.1 204 No Content\r\nX-Marker: 204\r\n\r\n" if $t =~ m{^/v1/204};
    return "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Marker: 304\r\n\r\n" if $t =~ m{^/v1/304};
    if ($t =~ m{^/v1/cookies}) {
        return $resp->(200, "cookies\n", 'Set-Cookie' => 'a=1; Path=/', 'Set-Cookie' => 'b=2; HttpOnly',
                       'Set-Cookie' => 'c=3; Expires=Wed, 21 Oct 2037 07:28:00 GMT');
    }
    if ($t =~ m{^/v1/hop}) {
        return $resp->(200, "hop\n", 'Connection' => 'X-Hop-Resp, keep-alive', 'X-Hop-Resp' => 'secret',
                       'Keep-Alive' => 'timeout=99, max=77', 'Upgrade' => 'h2c',
                       'Proxy-Connection' => 'keep-alive', 'Trailer' => 'X-Nothing',
                       'X-Resp-E2E' => 'kept');
    }
    if ($t =~ m{^/v1/redirect}) {
        return $resp->(302, "moved\n", 'Location' => "http://127.0.0.1:$conn->{local_port}/v1/elsewhere?q=1",
                       'Content-Location' => "http://127.0.0.1:$conn->{local_port}/v1/moved.html",
                       'X-Other-Url' => "http://127.0.0.1:$conn->{local_port}/v1/untouched");
    }
    if ($t =~ m{^/v1/early}) {
        return "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
             . $resp->(200, "after hints\n");
    }
    if ($t =~ m{^/v1/interim100}) {
        return "HTTP/1.1 100 Continue\r\n\r\n" . $resp->(200, "after 100\n");
    }
    if ($t =~ m{^/v1/trailers}) {
        return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
             . "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n";
    }
    if ($t =~ m{^/v1/slow}) {
        return [[sleep => 0.3], [send => $resp->(200, echo_body($req))]];
    }
    return $resp->(200, $m eq 'HEAD' ? '' : echo_body($req), 'X-Echo-Method' => $m);
}

sub no_more_bytes {
    my ($s, $buf, $wait) = @_;
    my $sel = IO::Select->new($s);
    if ($sel->can_read($wait // 0.3)) {
        my $n = sysread($s, $$buf, 65536, length $$buf);
        return 0 if $n;    # bytes arrived (EOF is also "no bytes", but the caller checks reuse)
    }
    return length($$buf) == 0;
}

for my $mpm (qw(event worker)) {
    note "=== MPM $mpm ===";
    my $be = APX::Backend->new(handler => sub {
        my ($req, $conn) = @_;
        $conn->{local_port} = $conn->{sock}->sockport;
        return backend_handler($req, $conn);
    });
    my $BP = $be->port;
    my $sd = start_slowd();
    my $SP = $sd->{port};
    my $P2 = APX::Httpd::free_port();
    my $B = "127.0.0.1:$BP";

    my $conf = ref_conf(<<"EOF");
AsyncProxyPass /api/static/ !
AsyncProxyPass /api/ http://$B/v1/
AsyncProxyPassReverse /api/ http://$B/v1/
AsyncProxyPass /slow/ http://127.0.0.1:$SP/
<Location /loc/>
    AsyncProxyPass http://$B/locbase/
</Location>
EOF
    my $global = ref_conf(<<"EOF") . (ref_mode() ? "ProxyVia On\n" : '');
AsyncProxyParkDelay 0
AsyncProxyMaxParked 1000
Listen 127.0.0.1:$P2
<VirtualHost 127.0.0.1:$P2>
    ServerName alt.example
    AllowEncodedSlashes NoDecode
    AsyncProxyPreserveHost On
    AsyncProxyAddHeaders Off
    AsyncProxyPass /api/ http://$B/v1/
</VirtualHost>
EOF
    my $h = APX::Httpd->new(mpm => $mpm, threads => 10, conf => $conf, global => $global,
                            ref_httpd_opts());
    mkdir $h->dir . "/htdocs/api";
    mkdir $h->dir . "/htdocs/api/static";
    $h->write_file('htdocs/api/static/file.txt', "static under the proxied prefix\n");
    $h->write_file('htdocs/static.txt', "a static file\n");
    $h->start;
    my $HP = $h->port;
    my %f0 = %{ figures($HP) };

    # --- methods --------------------------------------------------------
    for my $m (qw(GET HEAD POST PUT DELETE PATCH OPTIONS)) {
        my $body = $m =~ /^(POST|PUT|PATCH)$/ ? "body of $m" : undef;
        my $n0 = () = $be->requests;
        my $r = http_request($HP, $m, "/api/echo/$m?m=1", defined $body ? (body => $body) : ());
        is($r && $r->{status}, 200, "[$mpm] $m: 200");
        my @reqs = $be->wait_requests($n0 + 1, 5);
        my $got = $reqs[$n0] // {};
        is($got->{method}, $m, "[$mpm] $m: the backend got the method");
        is($got->{target}, "/v1/echo/$m?m=1", "[$mpm] $m: ... and the mapped target");
        if (defined $body) {
            is($got->{body}, $body, "[$mpm] $m: ... and the body");
            is($r && $r->{body}, echo_body($got), "[$mpm] $m: the client got the backend's body");
        }
        elsif ($m eq 'HEAD') {
            is($r && $r->{headers}{'x-echo-method'}, 'HEAD', "[$mpm] HEAD: the backend's headers came back");
        }
        else {
            is($r && $r->{headers}{'x-echo-method'}, $m, "[$mpm] $m: the backend's answer came back");
        }
    }

    # --- request bodies ---------------------------------------------------
    {
        # chunked request body, odd chunk sizes and a chunk extension
        my $s = connect_to($HP);
        my $buf = '';
        my $payload = join '', map { chr(65 + $_ % 26) x ($_ * 37 % 500 + 1) } 1 .. 60;
        my $raw = "POST /api/echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        my $p = 0;
        my $i = 0;
        while ($p < length $payload) {
            my $n = (7, 300, 1, 4096, 55)[$i++ % 5];
            my $piece = substr($payload, $p, $n);
            $p += length $piece;
            $raw .= sprintf("%x%s\r\n%s\r\n", length $piece, ($i == 2 ? ';x=y' : ''), $piece);
        }
        $raw .= "0\r\n\r\n";
        my $n0 = () = $be->requests;
        my $r = roundtrip($s, \$buf, $raw);
        is($r && $r->{status}, 200, "[$mpm] chunked request body: 200");
        my ($got) = ($be->wait_requests($n0 + 1))[$n0];
        is($got && $got->{body}, $payload, "[$mpm] chunked request body arrives de-chunked and intact");
        # a CL request on the same connection right after
        $r = roundtrip($s, \$buf, "PUT /api/echo/cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
        like($r && $r->{body}, qr/method=PUT .* len=3 /, "[$mpm] ... then a Content-Length body on the same connection");
    }
    for my $framing (qw(cl chunked)) {
        # 8 MiB streamed upload
        my $s = connect_to($HP);
        my $buf = '';
        my $n0 = () = $be->requests;
        my $head = "POST /api/echo/big-$framing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
        if ($framing eq 'cl') {
            send_raw($s, $head . "Content-Length: " . length($BIG) . "\r\n\r\n");
            send_raw($s, substr($BIG, $_ * 1048576, 1048576)) for 0 .. 7;
        }
        else {
            send_raw($s, $head . "Transfer-Encoding: chunked\r\n\r\n");
            for (my $p = 0; $p < length $BIG; $p += 300000) {
                my $piece = substr($BIG, $p, 300000);
                send_raw($s, sprintf("%x\r\n", length $piece) . $piece . "\r\n");
            }
            send_raw($s, "0\r\n\r\n");
        }
        my $r = read_response($s, \$buf, timeout => 30);
        is($r && $r->{status}, 200, "[$mpm] 8 MiB upload ($framing): 200");
        my ($got) = ($be->wait_requests($n0 + 1))[$n0];
        is($got && length($got->{body}), length $BIG, "[$mpm] 8 MiB upload ($framing): the backend got every byte");
        is($got && md5_hex($got->{body}), $BIG_MD5, "[$mpm] 8 MiB upload ($framing): ... intact (MD5)");
        like($r && $r->{body}, qr/len=8388608 md5=$BIG_MD5/, "[$mpm] 8 MiB upload ($framing): the backend's answer says so");
    }
    {
        # Expect: 100-continue: the client waits for the interim 100 before sending
        my $s = connect_to($HP);
        my $buf = '';
        my $n0 = () = $be->requests;
        send_raw($s, "POST /api/echo/expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n");
        my $got100 = read_until($s, \$buf, sub { $buf =~ /\r\n\r\n/ }, 5);
        like($buf, qr/^HTTP\/1\.1 100 /, "[$mpm] Expect: 100-continue: the client gets an interim 100 before sending the body");
        $buf = '' if $buf =~ /^HTTP\/1\.1 100 [^\r\n]*\r\n\r\n\z/;
        send_raw($s, "hello world");
        my $r = read_response($s, \$buf);
        is($r && $r->{status}, 200, "[$mpm] Expect: 100-continue: then the final 200");
        my ($got) = ($be->wait_requests($n0 + 1))[$n0];
        is($got && $got->{body}, 'hello world', "[$mpm] Expect: 100-continue: the body arrived");
    }

    # --- downloads -------------------------------------------------------
    for my $q ('', '?chunked=1') {
        my $size = 32 * 1024 * 1024;
        my $s = connect_to($HP);
        my $buf = '';
        my $r = roundtrip($s, \$buf, "GET /slow/delay/50/$size$q HTTP/1.1\r\nHost: x\r\n\r\n", timeout => 60);
        my $what = $q ? 'chunked' : 'Content-Length';
        is($r && $r->{status}, 200, "[$mpm] 32 MiB download ($what): 200");
        ok($r && $r->{complete}, "[$mpm] 32 MiB download ($what): framing complete");
        is($r && length($r->{body}), $size, "[$mpm] 32 MiB download ($what): every byte");
        is($r && md5_hex($r->{body}), md5_hex(pattern_body($size)), "[$mpm] 32 MiB download ($what): intact (MD5)");
        if ($q) {
            ok($r && ($r->{chunked} || defined $r->{headers}{'content-length'}),
               "[$mpm] chunked backend body re-framed for the client");
            unlike($r && $r->{headers}{'transfer-encoding'} // '', qr/chunked.*chunked/i,
                   "[$mpm] ... never chunked twice");
        }
        else {
            is($r && $r->{headers}{'content-length'}, $size, "[$mpm] Content-Length kept");
        }
        # the connection is still usable
        $r = roundtrip($s, \$buf, "GET /slow/delay/0/10 HTTP/1.1\r\nHost: x\r\n\r\n");
        is($r && $r->{body}, pattern_body(10), "[$mpm] ... and the connection serves the next request");
    }

    # --- bodiless responses, framed exactly -------------------------------
    {
        my $s = connect_to($HP);
        my $buf = '';
        my $r = roundtrip($s, \$buf, "HEAD /api/head HTTP/1.1\r\nHost: x\r\n\r\n", head_only => 1);
        is($r && $r->{status}, 200, "[$mpm] HEAD: 200");
        is($r && $r->{headers}{'content-length'}, 1234, "[$mpm] HEAD: the Content-Length of the GET");
        ok(no_more_bytes($s, \$buf), "[$mpm] HEAD: no body byte follows the head");
        for my $code (204, 304) {
            $r = roundtrip($s, \$buf, "GET /api/$code HTTP/1.1\r\nHost: x\r\n\r\n");
            is($r && $r->{status}, $code, "[$mpm] $code on the same connection");
            is($r && $r->{headers}{'x-marker'}, $code, "[$mpm] $code: the backend's header");
            ok(!($r && ($r->{headers}{'transfer-encoding'} || ($r->{headers}{'content-length'} // 0))),
               "[$mpm] $code: no body framing");
            ok(no_more_bytes($s, \$buf), "[$mpm] $code: no byte follows the head");
        }
        # and the next response on the connection is whole and in order
        $r = roundtrip($s, \$buf, "GET /api/echo/after HTTP/1.1\r\nHost: x\r\n\r\n");
        like($r && $r->{body}, qr{^method=GET target=/v1/echo/after }, "[$mpm] the next response follows cleanly");
        # HEAD then GET pipelined in one write: the second head directly after the first
        send_raw($s, "HEAD /api/head HTTP/1.1\r\nHost: x\r\n\r\nGET /api/head HTTP/1.1\r\nHost: x\r\n\r\n");
        my $r1 = read_response($s, \$buf, head_only => 1);
        my $r2 = read_response($s, \$buf);
        like($r2 && $r2->{head}, qr/^HTTP\/1\.1 200/, "[$mpm] pipelined HEAD + GET: the GET's head right after the HEAD's");
        is($r2 && $r2->{body}, 'h' x 1234, "[$mpm] ... and the GET's body");
    }

    # --- interim responses and trailers ----------------------------------
    {
        my $s = connect_to($HP);
        my $buf = '';
        my $r = roundtrip($s, \$buf, "GET /api/early HTTP/1.1\r\nHost: x\r\n\r\n");
        is($r && $r->{status}, 200, "[$mpm] backend 103 + 200: final 200");
        my @hints = grep { $_->{status} == 103 } @{ $r ? $r->{interim} : [] };
        is(scalar @hints, 1, "[$mpm] ... the 103 Early Hints is forwarded");
        like($hints[0] ? $hints[0]{headers}{link} : '', qr{</style\.css>; rel=preload}, "[$mpm] ... with its Link");
        is($r && $r->{body}, "after hints\n", "[$mpm] ... then the body");

        $r = roundtrip($s, \$buf, "GET /api/interim100 HTTP/1.1\r\nHost: x\r\n\r\n");
        is($r && $r->{status}, 200, "[$mpm] backend 100 + 200: final 200");
        is(scalar(@{ $r ? $r->{interim} : [1] }), 0, "[$mpm] ... the backend's unsolicited 100 is swallowed");
        is($r && $r->{body}, "after 100\n", "[$mpm] ... body intact");

        $r = roundtrip($s, \$buf, "GET /api/trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n");
        is($r && $r->{status}, 200, "[$mpm] chunked response with trailers: 200");
        is($r && $r->{body}, 'hello world', "[$mpm] ... body intact");
        ok($r && $r->{complete}, "[$mpm] ... framing complete");
        $r = roundtrip($s, \$buf, "GET /api/echo/after-trailers HTTP/1.1\r\nHost: x\r\n\r\n");
        like($r && $r->{body}, qr{target=/v1/echo/after-trailers }, "[$mpm] ... the next response on the connection is intact");
    }

    # --- headers ---------------------------------------------------------
    {
        my $n0 = () = $be->requests;
        my $r = http_request($HP, 'GET', '/api/hop', headers => [
            Host => 'front.example',
            Connection => 'keep-alive, X-Hop-Req',
            'X-Hop-Req' => 'secret',
            'Keep-Alive' => 'timeout=300',
            TE => 'trailers',
            Trailer => 'X-T',
            Upgrade => 'websocket',
            'Proxy-Authorization' => 'Basic Zm9vOmJhcg==',
            'Proxy-Foo' => 'bar',
            'X-Forwarded-For' => '10.1.2.3',
            'X-End2End' => 'kept',
        ]);
        is($r && $r->{status}, 200, "[$mpm] hop-by-hop request: 200");
        my ($got) = ($be->wait_requests($n0 + 1))[$n0];
        my %bh = %{ $got ? $got->{hdr} : {} };
        for my $hn (qw(x-hop-req keep-alive te trailer upgrade proxy-authorization proxy-foo transfer-encoding)) {
            ok(!exists $bh{$hn}, "[$mpm] request hop-by-hop '$hn' not forwarded")
                or diag "backend got $hn: $bh{$hn}";
        }
        unlike($bh{connection} // '', qr/x-hop-req/i, "[$mpm] ... nor the client's Connection tokens");
        is($bh{'x-end2end'}, 'kept', "[$mpm] an end-to-end header is forwarded");
        is($bh{host}, $B, "[$mpm] Host rewritten to the backend's host:port");
        like($bh{via} // '', qr/\b1\.1 \S+/, "[$mpm] Via added");
        # the client's own X-Forwarded-For is its word only (no
        # AsyncProxyTrustedProxies here): this hop's address replaces it
        is($bh{'x-forwarded-for'}, '127.0.0.1', "[$mpm] X-Forwarded-For is the client's address, its own claim dropped");
        is($bh{'x-forwarded-host'}, 'front.example', "[$mpm] X-Forwarded-Host is the client's Host");
        is($bh{'x-forwarded-proto'}, 'http', "[$mpm] X-Forwarded-Proto http");

        my %ch = %{ $r ? $r->{headers} : {} };
        ok(!exists $ch{'x-hop-resp'}, "[$mpm] response header named in the backend's Connection removed");
        unlike($ch{connection} // '', qr/x-hop-resp/i, "[$mpm] ... and the backend's Connection tokens");
        unlike($ch{'keep-alive'} // '', qr/timeout=99|max=77/, "[$mpm] the backend's Keep-Alive is not forwarded");
        ok(!exists $ch{upgrade}, "[$mpm] the backend's Upgrade is not forwarded");
        ok(!exists $ch{'proxy-connection'}, "[$mpm] the backend's Proxy-Connection is not forwarded");
        ok(!exists $ch{trailer}, "[$mpm] the backend's Trailer (no trailers follow) is not forwarded");
        is($ch{'x-resp-e2e'}, 'kept', "[$mpm] an end-to-end response header is kept");
    }
    {
        my $r = http_request($HP, 'GET', '/api/cookies');
        my @c = map { $_->[1] } grep { lc $_->[0] eq 'set-cookie' } @{ $r ? $r->{hlist} : [] };
        is_deeply(\@c, ['a=1; Path=/', 'b=2; HttpOnly', 'c=3; Expires=Wed, 21 Oct 2037 07:28:00 GMT'],
                  "[$mpm] three Set-Cookie headers kept as three, in order");
    }
    {
        # the alternate virtual host: PreserveHost On, AddHeaders Off
        my $n0 = () = $be->requests;
        my $r = http_request($P2, 'GET', '/api/echo/alt', headers => [Host => 'front.example']);
        is($r && $r->{status}, 200, "[$mpm] PreserveHost vhost: 200");
        my ($got) = ($be->wait_requests($n0 + 1))[$n0];
        is($got && $got->{hdr}{host}, 'front.example', "[$mpm] AsyncProxyPreserveHost On: the client's Host is sent");
        ok($got && !grep({ /^x-forwarded-/ } keys %{ $got->{hdr} }),
           "[$mpm] AsyncProxyAddHeaders Off: no X-Forwarded-*");
    }

    # --- targets and mappings --------------------------------------------
    {
        my $n0 = () = $be->requests;
        my $target = '/api/a%7Euser/b%20c/~x;p=1?x=1&y=%20z&e=%2F&u=%C3%A9#';
        chop $target;    # no fragment on the wire
        my $r = http_request($HP, 'GET', $target);
        is($r && $r->{status}, 200, "[$mpm] percent-encoded path and query: 200");
        my ($got) = ($be->wait_requests($n0 + 1))[$n0];
        is($got && $got->{target}, '/v1/a%7Euser/b%20c/~x;p=1?x=1&y=%20z&e=%2F&u=%C3%A9',
           "[$mpm] ... path, params and query forwarded byte for byte");

        $n0 = () = $be->requests;
        $r = http_request($HP, 'GET', '/api/a%2Fb/%7Euser?x=1&y=%20z');
        is($r && $r->{status}, 404, "[$mpm] an encoded slash is refused by httpd (AllowEncodedSlashes Off): 404");
        sleep 0.2;
        is(scalar(() = $be->requests), $n0, "[$mpm] ... and never reaches the backend");

        $r = http_request($P2, 'GET', '/api/a%2Fb/%7Euser?x=1&y=%20z');
        is($r && $r->{status}, 200, "[$mpm] AllowEncodedSlashes NoDecode: 200");
        ($got) = ($be->wait_requests($n0 + 1))[$n0];
        is($got && $got->{target}, '/v1/a%2Fb/%7Euser?x=1&y=%20z', "[$mpm] ... the encoded slash forwarded unchanged");

        $n0 = () = $be->requests;
        $r = http_request($HP, 'GET', '/api/static/file.txt');
        is($r && $r->{body}, "static under the proxied prefix\n", "[$mpm] longer excluded prefix '!': served from htdocs");
        $r = http_request($HP, 'GET', '/loc/thing?q=2');
        is($r && $r->{status}, 200, "[$mpm] <Location> form: 200");
        ($got) = ($be->wait_requests($n0 + 1))[$n0];
        is($got && $got->{target}, '/locbase/thing?q=2', "[$mpm] <Location> form: mapped to the URL's path");
        is(scalar(() = $be->requests), $n0 + 1, "[$mpm] the excluded path never reached the backend");

        $r = http_request($HP, 'GET', '/api/redirect');
        is($r && $r->{status}, 302, "[$mpm] 302 from the backend");
        like($r && $r->{headers}{location} // '', qr{^(?:http://127\.0\.0\.1:$HP)?/api/elsewhere\?q=1$},
             "[$mpm] AsyncProxyPassReverse rewrote Location to this server's /api/");
        like($r && $r->{headers}{'content-location'} // '', qr{^(?:http://127\.0\.0\.1:$HP)?/api/moved\.html$},
             "[$mpm] ... and Content-Location");
        is($r && $r->{headers}{'x-other-url'}, "http://$B/v1/untouched", "[$mpm] ... but no other header");
        $r = http_request($HP, 'GET', '/apx-status-not-proxied');
        is($r && $r->{status}, 404, "[$mpm] an unmapped path is not proxied (404 from httpd)");
    }

    # --- client keep-alive, static files in between, pipelining -----------
    {
        my $s = connect_to($HP);
        my $buf = '';
        my @seq = (
            ["GET /api/echo/k1 HTTP/1.1\r\nHost: x\r\n\r\n", qr{^method=GET target=/v1/echo/k1 }],
            ["GET /static.txt HTTP/1.1\r\nHost: x\r\n\r\n", qr/^a static file\n\z/],
            ["POST /api/echo/k3 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd", qr{^method=POST target=/v1/echo/k3 len=4 }],
            ["GET /static.txt HTTP/1.1\r\nHost: x\r\n\r\n", qr/^a static file\n\z/],
            ["GET /slow/delay/100/5 HTTP/1.1\r\nHost: x\r\n\r\n", qr/^01234\z/],
            ["GET /api/echo/k6 HTTP/1.1\r\nHost: x\r\n\r\n", qr{^method=GET target=/v1/echo/k6 }],
        );
        my $i = 0;
        for my $st (@seq) {
            $i++;
            my $r = roundtrip($s, \$buf, $st->[0]);
            like($r && $r->{body}, $st->[1], "[$mpm] keep-alive request $i on one connection");
        }
        # pipelined: a slow proxied request, a static file, a proxied request, all in one write
        send_raw($s, "GET /api/slow/p1 HTTP/1.1\r\nHost: x\r\n\r\n"
                   . "GET /static.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                   . "GET /api/echo/p3 HTTP/1.1\r\nHost: x\r\n\r\n"
                   . "GET /slow/delay/0/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        my @want = (qr{target=/v1/slow/p1 }, qr/^a static file\n\z/, qr{target=/v1/echo/p3 }, qr/^012\z/);
        for my $k (0 .. 3) {
            my $r = read_response($s, \$buf);
            like($r && $r->{body}, $want[$k], "[$mpm] pipelined response " . ($k + 1) . " in order");
        }
        my ($rest, $eof) = read_to_eof($s, 5);
        ok($eof && $rest eq '' && $buf eq '', "[$mpm] Connection: close on the last one: closed, nothing more");
    }

    # --- backend keep-alive reuse ------------------------------------------
    {
        my $n0 = () = $be->requests;
        for my $k (1 .. 4) {
            my $r = http_request($HP, 'GET', "/api/echo/reuse$k");
            is($r && $r->{status}, 200, "[$mpm] sequential request $k: 200");
        }
        my @r = ($be->wait_requests($n0 + 4))[$n0 .. $n0 + 3];
        my %ids = map { (($_ // {})->{conn_id} // -1) => 1 } @r;
        is(scalar(keys %ids), 1, "[$mpm] sequential requests reuse one backend connection")
            or diag join ' ', map { ($_ // {})->{conn_id} // 'none' } @r;
    }

    # --- the driver that ran ----------------------------------------------
    my %f1 = %{ figures($HP) };
    if (ref_mode()) {
        pass("[$mpm] (reference mode: no module figures)");
    }
    else {
        my %d = map { $_ => ($f1{$_} // 0) - ($f0{$_} // 0) } qw(ParkedTotal SyncTotal RequestsTotal BadGateway);
        note "[$mpm] figures: " . join ' ', map { "$_=$f1{$_}" } sort keys %f1;
        cmp_ok($d{RequestsTotal}, '>=', 40, "[$mpm] the module proxied the requests ($d{RequestsTotal})");
        if ($mpm eq 'event') {
            cmp_ok($d{ParkedTotal}, '>=', 40, "[$mpm] requests were parked (AsyncProxyParkedTotal +$d{ParkedTotal})");
            is($d{SyncTotal}, 0, "[$mpm] ... none ran on the synchronous driver");
        }
        else {
            cmp_ok($d{SyncTotal}, '>=', 40, "[$mpm] requests ran on the synchronous driver (AsyncProxySyncTotal +$d{SyncTotal})");
            is($d{ParkedTotal}, 0, "[$mpm] ... none was parked");
        }
        is($d{BadGateway}, 0, "[$mpm] no 502 along the way");
    }

    my $alog = $h->slurp_log($h->access_log);
    like($alog, qr{"GET /api/early HTTP/1\.1" 200 }, "[$mpm] proxied requests are in the access log");

    $h->stop;
    my @bad = $h->error_lines(qr/AH00026/);    # the encoded-slash 404 (logged at info; listed in case)
    is_deeply(\@bad, [], "[$mpm] no error in the error log") or diag join "\n", @bad;
    stop_slowd($sd);
    $be->stop;
}

cmp_ok(time - $t_start, '<', 300, sprintf('the file ends in bounded time (%.0f s; a hang would not)', time - $t_start));
done_testing;
