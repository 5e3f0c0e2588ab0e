#!/usr/bin/perl
# The response cache, as a client and the backend see it (event MPM, one
# child, so every request meets the same per-child cache; a short smoke run
# under the worker MPM at the end):
#   - directives: bad values of AsyncProxyCache* (and cache= of
#     AsyncProxyPass) fail configtest naming the directive and the value;
#     a configuration using them all passes;
#   - X-AsyncProxy-Cache on every response of a cache-enabled mapping
#     (MISS / HIT / STALE / BYPASS), none on a mapping without the cache;
#     the same word in the access log (%{asyncproxy-cache}n);
#   - hits carry Age and the stored headers (no hop-by-hop), HEAD after GET
#     is a hit without a body; POST is never cached;
#   - conditional requests on a fresh entry: If-None-Match (weak
#     comparison), If-Modified-Since -> 304 from the cache, no body;
#   - the key: Host / virtual host, query string, Vary;
#   - freshness: max-age, s-maxage (wins over max-age), Expires,
#     AsyncProxyCacheTTL 200ms for responses without freshness, explicit
#     freshness wins over the TTL, expiry after max-age=1;
#   - gzip: a 20 KB text/plain or application/json body is served gzip to
#     clients that accept it and identity to others, from ONE backend
#     fetch, with Vary: Accept-Encoding and distinct ETags; small bodies,
#     image/png and AsyncProxyCacheGzip Off are stored as they are;
#   - stale-while-revalidate (STALE at once, one refresh, then HIT with the
#     new body), stale-if-error (backend 500 or stopped -> STALE old body;
#     without it the error goes through);
#   - not cached: POST, request no-store, Authorization (unless public),
#     Set-Cookie, no-store, private, no-cache, 206, responses without
#     freshness when no TTL is set, bodies above AsyncProxyCacheMaxObject
#     (streamed through whole, Content-Length and chunked);
#   - AsyncProxyCache On at virtual-host level, Off in a <Location>, and
#     cache=off on a mapping;
#   - the status figures (CacheHits, CacheMisses, CacheStale, CacheBypass)
#     agree with the words the clients saw;
#   - no error-log line at level error or above, except the connect
#     failures to the backend this test stopped on purpose.
# Which fetch produced a body is visible in it: the backend writes its
# request sequence number into every body (seq=N).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(sleep time);

my $t_start = time;

# ---------------------------------------------------------------- content
sub http_date { POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime($_[0])) }

my $LM_T = 1668499951;    # Tue, 15 Nov 2022 08:12:31 GMT
my $LM = http_date($LM_T);


my $TEXT = substr(join('', map { "line $_: a text body that the cache stores once, compressed when smaller\n" }
                            1 .. 400), 0, 20480);
my $JSON = '[' . join(',', map { qq({"id":$_,"name":"item number $_","tags":["cached","json"]}) } 1 .. 380);
$JSON = substr($JSON, 0, 20479) . ']';
my $PNG = "\x89PNG\r\n\x1a\n" . noise(20472, 7);
my $BIG = noise(100_000, 11);                    # above AsyncProxyCacheMaxObject 64K
my $SMALL = "twenty bytes of text";              # 20 bytes
my $HEADBODY = 'h' x 1234;

# ---------------------------------------------------------------- backend
# Control files let the test change what the backend's connection
# processes answer (each connection runs in its own process).
my $CTL = tempdir('apx-cachectl-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub ctl {
    open my $fh, '<', "$CTL/$_[0]" or return '';
    local $/;
    my $v = <$fh>;
    close $fh;
    return $v // '';
}

sub set_ctl {
    my ($k, $v) = @_;
    open my $fh, '>', "$CTL/$k" or die "$CTL/$k: $!";
    print $fh $v;
    close $fh;
}

# a response; for HEAD the same head without the body
sub reply { APX::Backend::reply(@_) }

my %KINDS = map { $_ => 1 } qw(fresh smax expires none nostore private nocache cookie public range
                               big bigchunked vary text json small png ma1 swr sie err post query head
                               cond host auth);

sub backend {
    my ($req, $be2) = @_;
    my $t = $req->{target};
    # the first path segment that names a kind says what to answer
    my ($kind) = grep { $KINDS{$_} } split m{[/?]}, $t;
    return reply($req, 404, "no kind in $t\n") unless $kind;
    my $tag = "target=$t seq=$req->{seq}\n";
    my @ma60 = ('Cache-Control' => 'max-age=60');
    my @txt = ('Content-Type' => 'text/plain');
    if ($kind eq 'fresh') {
        return reply($req, 200, $tag, @ma60, @txt, 'ETag' => '"f1"', 'Last-Modified' => $LM,
                     'X-Stored' => 'yes', 'Connection' => 'X-Hop-Resp', 'X-Hop-Resp' => 'secret',
                     'Keep-Alive' => 'timeout=99');
    }
    return reply($req, 200, $tag, @txt, 'Cache-Control' => 'max-age=0, s-maxage=60') if $kind eq 'smax';
    return reply($req, 200, $tag, @txt, 'Date' => http_date(time), 'Expires' => http_date(time + 60))
        if $kind eq 'expires';
    return reply($req, 200, $tag, @txt) if $kind eq 'none';
    return reply($req, 200, $tag, @txt, 'Cache-Control' => 'no-store') if $kind eq 'nostore';
    return reply($req, 200, $tag, @txt, 'Cache-Control' => 'private, max-age=60') if $kind eq 'private';
    return reply($req, 200, $tag, @txt, 'Cache-Control' => 'no-cache') if $kind eq 'nocache';
    return reply($req, 200, $tag, @txt, @ma60, 'Set-Cookie' => 'session=42; Path=/') if $kind eq 'cookie';
    return reply($req, 200, $tag, @txt, 'Cache-Control' => 'public, max-age=60') if $kind eq 'public';
    return reply($req, 200, $tag, @txt, @ma60) if $kind eq 'auth' || $kind eq 'query';
    if ($kind eq 'host') {
        return reply($req, 200, 'host=' . ($req->{hdr}{host} // '') . " seq=$req->{seq}\n", @txt, @ma60);
    }
    if ($kind eq 'range') {
        return reply($req, 206, substr($TEXT, 0, 10), @txt, @ma60, 'Content-Range' => 'bytes 0-9/20480');
    }
    if ($kind eq 'big') {
        return reply($req, 200, $BIG, @ma60, 'Content-Type' => 'application/octet-stream');
    }
    if ($kind eq 'bigchunked') {
        my $s = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: application/octet-stream\r\n"
              . "Transfer-Encoding: chunked\r\n\r\n";
        return $s if $req->{method} eq 'HEAD';
        for (my $p = 0; $p < length $BIG; $p += 16384) {
            my $piece = substr($BIG, $p, 16384);
            $s .= sprintf("%x\r\n", length $piece) . $piece . "\r\n";
        }
        return $s . "0\r\n\r\n";
    }
    if ($kind eq 'vary') {
        return reply($req, 200, 'lang=' . ($req->{hdr}{'x-lang'} // 'none') . " seq=$req->{seq}\n",
                     @txt, @ma60, 'Vary' => 'X-Lang');
    }
    return reply($req, 200, $TEXT, @ma60, 'Content-Type' => 'text/plain; charset=utf-8', 'ETag' => '"gz1"')
        if $kind eq 'text';
    return reply($req, 200, $JSON, @ma60, 'Content-Type' => 'application/json', 'ETag' => '"js1"')
        if $kind eq 'json';
    return reply($req, 200, $SMALL, @ma60, @txt, 'ETag' => '"sm1"') if $kind eq 'small';
    return reply($req, 200, $PNG, @ma60, 'Content-Type' => 'image/png', 'ETag' => '"png1"') if $kind eq 'png';
    return reply($req, 200, $tag, @txt, 'Cache-Control' => 'max-age=1') if $kind eq 'ma1';
    if ($kind eq 'swr') {
        return reply($req, 200, "swr $tag", @txt, 'Cache-Control' => 'max-age=1, stale-while-revalidate=30')
            unless ctl('swr') eq 'slow';
        # the refresh: 2 s late, so it must say it stays fresh longer than
        # that (RFC 9111 4.2.3 counts the response delay into its age: with
        # max-age=1 it would be stale on arrival)
        return [[sleep => 2], [send => reply($req, 200, "swr $tag", @txt,
                                             'Cache-Control' => 'max-age=30, stale-while-revalidate=30')]];
    }
    if ($kind eq 'sie' || $kind eq 'err') {
        return reply($req, 500, "backend error\n", @txt) if ctl('err') eq '500';
        return reply($req, 200, "$kind $tag", @txt,
                     'Cache-Control' => $kind eq 'sie' ? 'max-age=1, stale-if-error=30' : 'max-age=1');
    }
    return reply($req, 200, "$req->{method} $tag", @txt, @ma60) if $kind eq 'post';
    return reply($req, 200, $HEADBODY, @txt, @ma60, 'X-Head' => 'yes') if $kind eq 'head';
    return reply($req, 200, $tag, @txt, @ma60, 'ETag' => '"c1"', 'Last-Modified' => $LM) if $kind eq 'cond';
    return reply($req, 200, $tag, @txt, @ma60);
}

# ---------------------------------------------------------------- helpers
my %WORDS;    # X-AsyncProxy-Cache word => how many responses carried it

sub word {
    my ($r) = @_;
    return 'no response' unless $r;
    return $r->{headers}{'x-asyncproxy-cache'} // 'no header';
}

# one request on a fresh connection (Connection: close); counts the word
sub call_port {
    my ($port, $method, $path, @h) = @_;
    my $r = http_request($port, $method, $path, headers => \@h,
                         ($method eq 'POST' ? (body => 'posted') : ()));
    $WORDS{ $r->{headers}{'x-asyncproxy-cache'} }++ if $r && defined $r->{headers}{'x-asyncproxy-cache'};
    return $r;
}

# like call_port, but returns also the bytes that followed the response
# before the server closed (a 304 or a HEAD must have none)
sub exchange {
    my ($port, $method, $path, @h) = @_;
    my $s = connect_to($port);
    my $buf = '';
    my $r = roundtrip($s, \$buf, request_bytes($port, $method, $path, headers => \@h), timeout => 10);
    my ($rest) = read_to_eof($s, 2);
    close $s;
    $WORDS{ $r->{headers}{'x-asyncproxy-cache'} }++ if $r && defined $r->{headers}{'x-asyncproxy-cache'};
    return ($r, $buf . $rest);
}

sub gunzip_str {
    my ($in) = @_;
    my $out;
    return gunzip(\$in => \$out) ? $out : "gunzip failed: $GunzipError";
}

sub seq_of { my ($r) = @_; return $r && $r->{body} =~ /seq=(\d+)/ ? $1 : -1 }

# =================================================== 1. configuration checks
{
    my $B = '127.0.0.1:' . APX::Httpd::free_port();
    my @bad = (
        [global => 'AsyncProxyCacheSize lots',      qr/AsyncProxyCacheSize\b.*\blots\b/],
        [global => 'AsyncProxyCacheSize -1M',       qr/AsyncProxyCacheSize\b.*-1M\b/],
        [global => 'AsyncProxyCacheMaxObject 12Q',  qr/AsyncProxyCacheMaxObject\b.*\b12Q\b/],
        [global => 'AsyncProxyCacheWait abc',       qr/AsyncProxyCacheWait\b.*\babc\b/],
        [global => 'AsyncProxyCacheWait -2s',       qr/AsyncProxyCacheWait\b.*-2s\b/],
        [conf   => 'AsyncProxyCacheTTL soon',       qr/AsyncProxyCacheTTL\b.*\bsoon\b/],
        [conf   => 'AsyncProxyCacheTTL 5parsecs',   qr/AsyncProxyCacheTTL\b.*\b5parsecs\b/],
        [conf   => 'AsyncProxyCache maybe',         qr/AsyncProxyCache\b.*(?:On or Off|maybe)/],
        [conf   => 'AsyncProxyCacheGzip yes',       qr/AsyncProxyCacheGzip\b.*(?:On or Off|yes)/],
        [conf   => "AsyncProxyPass /x/ http://$B/ cache=maybe", qr/AsyncProxyPass\b.*\bmaybe\b/],
        [conf   => 'AsyncProxyCacheSize 1M',        qr/AsyncProxyCacheSize\b/],      # global only
        [conf   => 'AsyncProxyCacheWait 1s',        qr/AsyncProxyCacheWait\b/],      # global only
    );
    for my $case (@bad) {
        my ($where, $line, $re) = @$case;
        my $h = APX::Httpd->new(mpm => 'event', $where => $line);
        my ($rc, $out) = $h->configtest;
        isnt($rc, 0, "configtest fails: $line" . ($where eq 'conf' ? ' (in a VirtualHost)' : ''));
        like($out, $re, '... naming the directive and the value') or diag $out;
        unlike($out, qr/Invalid command/, '... as a known directive') or diag $out;
    }
    my $good_global = "AsyncProxyCacheSize 64M\nAsyncProxyCacheMaxObject 512K\nAsyncProxyCacheWait 10s\n"
                    . "AsyncProxyCache Off\nAsyncProxyCacheTTL off\nAsyncProxyCacheGzip On";
    my $good = <<"EOF";
AsyncProxyCache On
AsyncProxyCacheTTL 2s
AsyncProxyCacheGzip On
AsyncProxyPass /a/ http://$B/a/ cache=on
AsyncProxyPass /b/ http://$B/b/ cache=off timeout=5
<Location /c/>
    AsyncProxyPass http://$B/c/ cache=on
    AsyncProxyCache On
    AsyncProxyCacheTTL 500ms
    AsyncProxyCacheGzip Off
</Location>
<Location /d/>
    AsyncProxyPass http://$B/d/
    AsyncProxyCacheTTL 1m
</Location>
<Location /a/nocache/>
    AsyncProxyCache Off
</Location>
EOF
    my $h = APX::Httpd->new(mpm => 'event', conf => $good, global => $good_global);
    my ($rc, $out) = $h->configtest;
    is($rc, 0, 'a configuration using every cache directive and option passes') or diag $out;
}

# =================================================== 2. behaviour (event MPM)
my $be = APX::Backend->new(handler => \&backend);
my $be2 = APX::Backend->new(handler => \&backend);    # stopped midway (stale-if-error)
my $B = '127.0.0.1:' . $be->port;
my $B2P = $be2->port;
my $B2 = "127.0.0.1:$B2P";
my $P2 = APX::Httpd::free_port();

my $conf = <<"EOF";
AsyncProxyPass /c/ http://$B/c/ cache=on
AsyncProxyPass /nc/ http://$B/nc/
AsyncProxyPass /e/ http://$B2/e/ cache=on
<Location /ttl/>
    AsyncProxyPass http://$B/ttl/
    AsyncProxyCache On
    AsyncProxyCacheTTL 200ms
</Location>
<Location /nogz/>
    AsyncProxyPass http://$B/nogz/ cache=on
    AsyncProxyCacheGzip Off
</Location>
<Location /c/err/>
    AsyncProxyCacheStaleOnError off
</Location>
<Location /e/ma1/>
    AsyncProxyCacheStaleOnError off
</Location>
EOF
my $global = <<"EOF";
AsyncProxyCacheSize 8M
AsyncProxyCacheMaxObject 64K
CustomLog logs/cache_log "%{asyncproxy-cache}n %m %U%q %>s"
Listen 127.0.0.1:$P2
<VirtualHost 127.0.0.1:$P2>
    ServerName a.test
    AsyncProxyPreserveHost On
    AsyncProxyCache On
    AsyncProxyPass /v/ http://$B/v/
    AsyncProxyPass /vo/ http://$B/vo/ cache=off
    <Location /v/off/>
        AsyncProxyCache Off
    </Location>
</VirtualHost>
<VirtualHost 127.0.0.1:$P2>
    ServerName b.test
    AsyncProxyPreserveHost On
    AsyncProxyCache On
    AsyncProxyPass /v/ http://$B/v/
</VirtualHost>
EOF
my $h = APX::Httpd->new(mpm => 'event', threads => 25, servers => 1, server_limit => 1,
                        conf => $conf, global => $global);
$h->start;
my $HP = $h->port;
my %f0 = %{ figures($HP) };
ok(defined $f0{CacheHits}, 'the status page has the cache figures') or diag explain \%f0;

sub get  { call_port($HP, 'GET', @_) }
sub bcount { my ($target) = @_; return scalar grep { $_->{target} eq $target } $be->requests }

# the max-age=1 entries are primed first: their expiry is checked later,
# after one shared sleep
my %prime;
$prime{$_} = get($_) for qw(/c/ma1/x /c/swr/x /c/sie/x /c/err/x /e/sie/x /e/ma1/x);
my $t_primed = time;
for my $p (sort keys %prime) {
    is(word($prime{$p}), 'MISS', "$p (max-age=1): MISS on the first request");
}
my $fresh0 = get('/c/fresh/age');    # its Age is checked after the sleep

# --- MISS, HIT, stored headers, Age ---------------------------------------
{
    my $r1 = get('/c/fresh/1');
    is($r1 && $r1->{status}, 200, 'fresh (max-age=60): 200');
    is(word($r1), 'MISS', '... X-AsyncProxy-Cache: MISS on the first request');
    my $r2 = get('/c/fresh/1');
    is(word($r2), 'HIT', '... HIT on the second');
    is($r2 && $r2->{body}, $r1 && $r1->{body}, '... with the body of the first fetch');
    is(bcount('/c/fresh/1'), 1, '... the backend saw one request');
    like($r2 && $r2->{headers}{age} // '', qr/^\d+$/, '... the hit carries Age in whole seconds');
    is($r2 && $r2->{headers}{'x-stored'}, 'yes', '... and the stored end-to-end headers');
    is($r2 && $r2->{headers}{etag}, '"f1"', '... ETag');
    is($r2 && $r2->{headers}{'last-modified'}, $LM, '... Last-Modified');
    is($r2 && $r2->{headers}{'cache-control'}, 'max-age=60', '... Cache-Control');
    ok($r2 && !exists $r2->{headers}{'x-hop-resp'}, '... but not a header the backend named in Connection');
    unlike($r2 && $r2->{headers}{'keep-alive'} // '', qr/timeout=99/, "... nor the backend's Keep-Alive");
    is($r2 && $r2->{headers}{'content-length'}, length($r1 ? $r1->{body} : ''), '... Content-Length of the body');

    my $r3 = call_port($HP, 'GET', '/nc/fresh/1');
    is($r3 && $r3->{status}, 200, 'a mapping without the cache: 200');
    ok($r3 && !exists $r3->{headers}{'x-asyncproxy-cache'}, '... and no X-AsyncProxy-Cache header');
    call_port($HP, 'GET', '/nc/fresh/1');
    is(bcount('/nc/fresh/1'), 2, '... every request goes to the backend');
}

# --- HEAD after GET ---------------------------------------------------------
{
    my $g = get('/c/head/1');
    is(word($g), 'MISS', 'GET (1234-byte body): MISS');
    my ($r, $extra) = exchange($HP, 'HEAD', '/c/head/1');
    is($r && $r->{status}, 200, 'HEAD after GET: 200');
    is(word($r), 'HIT', '... HIT');
    is($r && $r->{headers}{'content-length'}, 1234, '... with the Content-Length of the GET');
    is($r && $r->{headers}{'x-head'}, 'yes', '... and the stored headers');
    is($extra, '', '... and no body byte');
    is(bcount('/c/head/1'), 1, '... the backend saw only the GET');
    my ($r2, $extra2) = exchange($HP, 'GET', '/c/head/1');
    is($r2 && $r2->{body}, $HEADBODY, 'GET after the HEAD: the whole body');
    is($extra2, '', '... nothing after it');
}

# --- conditional requests on a fresh entry -----------------------------------
{
    my $r0 = get('/c/cond/1');
    is(word($r0), 'MISS', 'cond (ETag "c1", Last-Modified): MISS');
    my @cases = (
        ['If-None-Match: "c1"',           ['If-None-Match' => '"c1"'], 304],
        ['If-None-Match: W/"c1" (weak)',  ['If-None-Match' => 'W/"c1"'], 304],
        ['If-None-Match: "x", "c1"',      ['If-None-Match' => '"x", "c1"'], 304],
        ['If-None-Match: "zz"',           ['If-None-Match' => '"zz"'], 200],
        ['If-Modified-Since = Last-Modified', ['If-Modified-Since' => $LM], 304],
        ['If-Modified-Since a day later', ['If-Modified-Since' => http_date($LM_T + 86400)], 304],
        ['If-Modified-Since a day earlier', ['If-Modified-Since' => http_date($LM_T - 86400)], 200],
        # RFC 9110 13.1.3: If-Modified-Since is ignored when If-None-Match is present
        ['If-None-Match: "zz" with a matching If-Modified-Since',
         ['If-None-Match' => '"zz"', 'If-Modified-Since' => $LM], 200],
    );
    for my $c (@cases) {
        my ($label, $hdrs, $want) = @$c;
        my ($r, $extra) = exchange($HP, 'GET', '/c/cond/1', @$hdrs);
        is($r && $r->{status}, $want, "$label: $want");
        is(word($r), 'HIT', '... from the cache (HIT)');
        if ($want == 304) {
            is(($r ? $r->{body} : 'x') . $extra, '', '... no body');
            ok($r && !$r->{headers}{'transfer-encoding'} && !($r->{headers}{'content-length'} // 0),
               '... no body framing');
        }
        else {
            is($r && $r->{body}, $r0 && $r0->{body}, '... the stored body');
        }
    }
    is(bcount('/c/cond/1'), 1, 'the conditional requests never reached the backend');
}

# --- the key: query string, Host / virtual host, Vary -------------------------
{
    my $a1 = get('/c/query/1?a=1');
    my $a2 = get('/c/query/1?a=2');
    my $a3 = get('/c/query/1?a=1');
    is(word($a1) . ' ' . word($a2) . ' ' . word($a3), 'MISS MISS HIT', 'query string: ?a=1 MISS, ?a=2 MISS, ?a=1 HIT');
    like($a3 && $a3->{body}, qr{target=/c/query/1\?a=1 }, '... the ?a=1 hit has the ?a=1 body');
    like($a2 && $a2->{body}, qr{target=/c/query/1\?a=2 }, '... ?a=2 got its own');

    my $va = call_port($P2, 'GET', '/v/host/1', Host => 'a.test');
    my $vb = call_port($P2, 'GET', '/v/host/1', Host => 'b.test');
    my $va2 = call_port($P2, 'GET', '/v/host/1', Host => 'a.test');
    my $vb2 = call_port($P2, 'GET', '/v/host/1', Host => 'b.test');
    is(word($va) . ' ' . word($vb), 'MISS MISS',
       'virtual hosts a.test and b.test (AsyncProxyCache On at vhost level): each MISS first');
    like($va2 && $va2->{body}, qr/^host=a\.test /, '... a.test gets its own body back');
    like($vb2 && $vb2->{body}, qr/^host=b\.test /, '... b.test its own');
    is(word($va2) . ' ' . word($vb2), 'HIT HIT', '... each a HIT the second time');
    is(bcount('/v/host/1'), 2, '... two backend requests in all');

    my $o1 = call_port($P2, 'GET', '/v/off/fresh/1', Host => 'a.test');
    call_port($P2, 'GET', '/v/off/fresh/1', Host => 'a.test');
    ok($o1 && $o1->{status} == 200 && !exists $o1->{headers}{'x-asyncproxy-cache'},
       'AsyncProxyCache Off in a <Location> under a cached vhost: 200 without X-AsyncProxy-Cache');
    is(bcount('/v/off/fresh/1'), 2, '... both requests reached the backend');
    my $n1 = call_port($P2, 'GET', '/vo/fresh/1', Host => 'a.test');
    call_port($P2, 'GET', '/vo/fresh/1', Host => 'a.test');
    ok($n1 && $n1->{status} == 200 && !exists $n1->{headers}{'x-asyncproxy-cache'},
       'cache=off on a mapping under a cached vhost: no X-AsyncProxy-Cache');
    is(bcount('/vo/fresh/1'), 2, '... both requests reached the backend');

    my $en = get('/c/vary/1', 'X-Lang' => 'en');
    my $fr = get('/c/vary/1', 'X-Lang' => 'fr');
    my $en2 = get('/c/vary/1', 'X-Lang' => 'en');
    my $fr2 = get('/c/vary/1', 'X-Lang' => 'fr');
    my $none = get('/c/vary/1');
    is(word($en) . ' ' . word($fr), 'MISS MISS', 'Vary: X-Lang: en MISS, fr MISS');
    is(word($en2) . ' ' . word($fr2), 'HIT HIT', '... each a HIT the second time');
    like($en2 && $en2->{body}, qr/^lang=en /, '... the en hit has the en body');
    like($fr2 && $fr2->{body}, qr/^lang=fr /, '... the fr hit has the fr body');
    is(word($none), 'MISS', '... no X-Lang is a third variant (MISS)');
    like($none && $none->{body}, qr/^lang=none /, '... with its own body');
    is(bcount('/c/vary/1'), 3, '... three backend requests');
}

# --- freshness -----------------------------------------------------------------
{
    my $s1 = get('/c/smax/1');
    my $s2 = get('/c/smax/1');
    is(word($s1) . ' ' . word($s2), 'MISS HIT', 'max-age=0, s-maxage=60: s-maxage wins in a shared cache (MISS, HIT)');
    my $e1 = get('/c/expires/1');
    my $e2 = get('/c/expires/1');
    is(word($e1) . ' ' . word($e2), 'MISS HIT', 'Expires in 60 s: MISS, HIT');
    my $n1 = get('/c/none/1');
    my $n2 = get('/c/none/1');
    is(word($n1) . ' ' . word($n2), 'BYPASS BYPASS', 'no freshness, no AsyncProxyCacheTTL: BYPASS, BYPASS');
    is(bcount('/c/none/1'), 2, '... both reached the backend');

    # AsyncProxyCacheTTL 200ms
    my $t1 = get('/ttl/none/1');
    my $t_first = time;
    my $t2 = get('/ttl/none/1');
    my $dt = time - $t_first;
    my $f1 = get('/ttl/fresh/1');
    is(word($t1), 'MISS', 'AsyncProxyCacheTTL 200ms, no freshness from the backend: MISS');
    SKIP: {
        skip sprintf('the second request took %.3f s', $dt), 2 if $dt > 0.15;
        is(word($t2), 'HIT', sprintf('... HIT %.0f ms later', $dt * 1000));
        is(seq_of($t2), seq_of($t1), '... with the first body');
    }
    my $left = $t_first + 0.35 - time;
    sleep $left if $left > 0;
    my $t3 = get('/ttl/none/1');
    is(word($t3), 'MISS', '... MISS again 350 ms later (expired)');
    isnt(seq_of($t3), seq_of($t1), '... with a new body');
    is(bcount('/ttl/none/1'), 2, '... two backend requests');
    my $f2 = get('/ttl/fresh/1');
    is(word($f1) . ' ' . word($f2), 'MISS HIT', '... but max-age=60 wins over the TTL: still a HIT after 350 ms');
}

# --- gzip --------------------------------------------------------------------------
{
    for my $case (['text', $TEXT, '"gz1"', 'text/plain'], ['json', $JSON, '"js1"', 'application/json']) {
        my ($kind, $orig, $etag, $type) = @$case;
        # identity first, then gzip, then identity
        my $i1 = get("/c/$kind/1");
        my $g1 = get("/c/$kind/1", 'Accept-Encoding' => 'gzip');
        my $i2 = get("/c/$kind/1");
        is(word($i1), 'MISS', "$kind (20 KB $type): MISS for a client without Accept-Encoding");
        ok($i1 && $i1->{body} eq $orig && !$i1->{headers}{'content-encoding'},
           '... the original bytes, no Content-Encoding');
        is(word($g1), 'HIT', '... then HIT for a client with Accept-Encoding: gzip');
        is($g1 && $g1->{headers}{'content-encoding'}, 'gzip', '... Content-Encoding: gzip');
        like($g1 && $g1->{headers}{vary} // '', qr/\bAccept-Encoding\b/i, '... Vary: Accept-Encoding');
        ok($g1 && length($g1->{body}) < length($orig) / 2, '... a body much smaller than the original ('
           . length($g1 ? $g1->{body} : '') . ' bytes)');
        ok($g1 && gunzip_str($g1->{body}) eq $orig, '... which gunzips to the original');
        like($g1 && $g1->{headers}{etag} // '', qr/^(?:W\/)?"\Q${\ substr($etag, 1, -1)}\E-gzip"$/,
             '... with the ETag "...-gzip"');
        is(word($i2), 'HIT', '... then HIT again without Accept-Encoding');
        ok($i2 && $i2->{body} eq $orig, '... the identical original bytes');
        ok($i2 && !$i2->{headers}{'content-encoding'}, '... no Content-Encoding');
        like($i2 && $i2->{headers}{vary} // '', qr/\bAccept-Encoding\b/i, '... also Vary: Accept-Encoding');
        is($i2 && $i2->{headers}{etag}, $etag, "... and the backend's ETag");
        is(bcount("/c/$kind/1"), 1, '... one backend request for both encodings');

        # gzip first
        my $g2 = get("/c/$kind/2", 'Accept-Encoding' => 'gzip');
        is(word($g2), 'MISS', "$kind, a gzip client first: MISS");
        my $b2 = $g2 ? (($g2->{headers}{'content-encoding'} // '') eq 'gzip' ? gunzip_str($g2->{body}) : $g2->{body}) : '';
        ok($b2 eq $orig, '... its body decodes to the original');
        my $i3 = get("/c/$kind/2");
        my $g3 = get("/c/$kind/2", 'Accept-Encoding' => 'gzip, deflate');
        is(word($i3) . ' ' . word($g3), 'HIT HIT', '... then an identity HIT and a gzip HIT');
        ok($i3 && $i3->{body} eq $orig && !$i3->{headers}{'content-encoding'}, '... identity: original bytes');
        ok($g3 && ($g3->{headers}{'content-encoding'} // '') eq 'gzip' && gunzip_str($g3->{body}) eq $orig,
           '... gzip: gunzips to the original');
        is(bcount("/c/$kind/2"), 1, '... one backend request');
    }
    {
        # a conditional request against the gzip variant's ETag
        my ($r, $extra) = exchange($HP, 'GET', '/c/text/1', 'Accept-Encoding' => 'gzip',
                                   'If-None-Match' => '"gz1-gzip"');
        is($r && $r->{status}, 304, 'If-None-Match: "gz1-gzip" with Accept-Encoding: gzip: 304');
        is(word($r), 'HIT', '... HIT');
    }
    for my $case (['small', $SMALL, 'a 20-byte text/plain body'], ['png', $PNG, 'a 20 KB image/png']) {
        my ($kind, $orig, $what) = @$case;
        my $r1 = get("/c/$kind/1", 'Accept-Encoding' => 'gzip');
        my $r2 = get("/c/$kind/1", 'Accept-Encoding' => 'gzip');
        is(word($r1) . ' ' . word($r2), 'MISS HIT', "$what: MISS, HIT");
        ok($r2 && !$r2->{headers}{'content-encoding'}, '... stored as is: no Content-Encoding for a gzip client');
        ok($r2 && $r2->{body} eq $orig, '... the original bytes');
    }
    {
        my $r1 = get('/nogz/text/1', 'Accept-Encoding' => 'gzip');
        my $r2 = get('/nogz/text/1', 'Accept-Encoding' => 'gzip');
        is(word($r1) . ' ' . word($r2), 'MISS HIT', 'AsyncProxyCacheGzip Off: MISS, HIT');
        ok($r2 && !$r2->{headers}{'content-encoding'} && $r2->{body} eq $TEXT,
           '... the 20 KB text served as is to a gzip client');
    }
}

# --- not cached ------------------------------------------------------------------
{
    my @cases = (
        ['no-store response', '/c/nostore/1', []],
        ['private response', '/c/private/1', []],
        ['no-cache response', '/c/nocache/1', []],
        ['Set-Cookie response', '/c/cookie/1', []],
        ['request Cache-Control: no-store', '/c/fresh/reqnostore', ['Cache-Control' => 'no-store']],
        ['request with Authorization', '/c/auth/1', ['Authorization' => 'Basic dXNlcjpwYXNz']],
    );
    for my $c (@cases) {
        my ($label, $path, $hdrs) = @$c;
        my $r1 = get($path, @$hdrs);
        my $r2 = get($path, @$hdrs);
        is($r1 && $r1->{status}, 200, "$label: 200");
        is(word($r1) . ' ' . word($r2), 'BYPASS BYPASS', '... BYPASS twice');
        is(bcount($path), 2, '... both reached the backend');
        isnt(seq_of($r1), seq_of($r2), '... each with its own body');
    }
    {
        # what was bypassed was not stored either
        my $r = get('/c/fresh/reqnostore');
        is(word($r), 'MISS', 'after request no-store, a plain request is a MISS (nothing was stored)');
        $r = get('/c/auth/1');
        is(word($r), 'MISS', 'after Authorization requests, one without is a MISS (nothing was stored)');
    }
    {
        my $r1 = get('/c/public/1', 'Authorization' => 'Basic dXNlcjpwYXNz');
        is(word($r1), 'MISS', 'Authorization, response Cache-Control: public: MISS (stored)');
        my $r2 = get('/c/public/1');
        is(word($r2), 'HIT', '... a request without Authorization then HITs it');
        is(bcount('/c/public/1'), 1, '... one backend request');
    }
    {
        my $r1 = call_port($HP, 'POST', '/c/post/1');
        my $r2 = call_port($HP, 'POST', '/c/post/1');
        is(word($r1) . ' ' . word($r2), 'BYPASS BYPASS', 'POST: BYPASS twice');
        like($r2 && $r2->{body}, qr/^POST /, "... the backend's answer to the POST");
        is(bcount('/c/post/1'), 2, '... both reached the backend');
        my $g = get('/c/post/1');
        is(word($g), 'MISS', '... a GET afterwards is a MISS (the POST answer was not stored)');
        like($g && $g->{body}, qr/^GET /, '... with the answer to a GET');
    }
    {
        my $r1 = get('/c/range/1', 'Range' => 'bytes=0-9');
        my $r2 = get('/c/range/1', 'Range' => 'bytes=0-9');
        is($r1 && $r1->{status}, 206, '206 from the backend: passed on');
        isnt(word($r2), 'HIT', '... and not stored (the second is ' . word($r2) . ')');
        is(bcount('/c/range/1'), 2, '... both reached the backend');
    }
    for my $kind (qw(big bigchunked)) {
        my $path = "/c/$kind/1";
        my $r1 = get($path);
        my $r2 = get($path);
        my $what = $kind eq 'big' ? 'Content-Length' : 'chunked';
        is($r1 && $r1->{status}, 200, "100 KB body ($what) above AsyncProxyCacheMaxObject 64K: 200");
        ok($r1 && $r1->{complete} && length($r1->{body}) == length($BIG) && $r1->{body} eq $BIG,
           '... the first body complete and correct');
        ok($r2 && $r2->{complete} && $r2->{body} eq $BIG, '... the second too');
        like(word($r1), qr/^(?:MISS|BYPASS)$/, '... the first is ' . word($r1));
        if ($kind eq 'big') {
            is(word($r2), 'BYPASS', '... BYPASS on the next');
        }
        else {
            isnt(word($r2), 'HIT', '... never a HIT (' . word($r2) . ')');
        }
        is(bcount($path), 2, '... both reached the backend');
    }
}

# --- staleness (the max-age=1 entries primed at the start) -------------------------
{
    set_ctl(swr => 'slow');
    set_ctl(err => '500');
    $be2->stop;
    my $left = $t_primed + 1.25 - time;
    sleep $left if $left > 0;

    my $a = get('/c/fresh/age');
    is(word($a), 'HIT', 'max-age=60 entry stored over a second ago: HIT');
    like($a && $a->{headers}{age} // '', qr/^[1-9]\d*$/, '... Age >= 1 (' . ($a && $a->{headers}{age} // 'none') . ')');
    is(seq_of($a), seq_of($fresh0), '... the first body');

    my $m = get('/c/ma1/x');
    is(word($m), 'MISS', 'max-age=1 after 1.25 s: MISS');
    isnt(seq_of($m), seq_of($prime{'/c/ma1/x'}), '... a new body');
    is(bcount('/c/ma1/x'), 2, '... a second backend request');

    my $t0 = time;
    my $s1 = get('/c/swr/x');
    my $took = time - $t0;
    is(word($s1), 'STALE', 'max-age=1, stale-while-revalidate=30 after 1.25 s: STALE');
    is($s1 && $s1->{body}, $prime{'/c/swr/x'} && $prime{'/c/swr/x'}{body}, '... the old body');
    cmp_ok($took, '<', 1.5, sprintf('... at once (%.3f s) although the backend now takes 2 s', $took));
    my @refresh;
    wait_for(sub { @refresh = grep { $_->{target} eq '/c/swr/x' } $be->requests; @refresh >= 2 }, 2);
    is(scalar @refresh, 2, '... the backend sees one refresh');
    my $s2 = get('/c/swr/x');
    is(word($s2), 'STALE', '... a request during the refresh: STALE too');
    sleep 0.2;
    is(bcount('/c/swr/x'), 2, '... and no second refresh');

    my $e = get('/c/sie/x');
    is($e && $e->{status}, 200, 'max-age=1, stale-if-error=30, the backend answers 500: 200');
    is(word($e), 'STALE', '... STALE');
    is($e && $e->{body}, $prime{'/c/sie/x'} && $prime{'/c/sie/x'}{body}, '... the old body');
    is(bcount('/c/sie/x'), 2, '... after asking the backend');
    my $x = get('/c/err/x');
    is($x && $x->{status}, 500, 'max-age=1 without stale-if-error, AsyncProxyCacheStaleOnError off, the backend answers 500: the 500 goes through');
    like($x && $x->{body}, qr/^backend error/, "... with the backend's body");

    my $d = get('/e/sie/x');
    is($d && $d->{status}, 200, 'stale-if-error=30, the backend stopped: 200');
    is(word($d), 'STALE', '... STALE');
    is($d && $d->{body}, $prime{'/e/sie/x'} && $prime{'/e/sie/x'}{body}, '... the old body');
    my $d2 = get('/e/ma1/x');
    is($d2 && $d2->{status}, 502, 'max-age=1 without stale-if-error, AsyncProxyCacheStaleOnError off, the backend stopped: 502');

    # the refresh arrived at the backend at $refresh[1]{time} and is answered 2 s later
    my $done = ($refresh[1] ? $refresh[1]{time} : time) + 2;
    $left = $done + 0.3 - time;
    sleep $left if $left > 0;
    my $s3 = get('/c/swr/x');
    is(word($s3), 'HIT', 'shortly after the refresh completed: HIT');
    is(seq_of($s3), $refresh[1] ? $refresh[1]{seq} : -2, '... with the refreshed body');
    like($s3 && $s3->{body}, qr/^swr target=/, '... (the whole of it)');
    is(bcount('/c/swr/x'), 2, '... still two backend requests in all');
}

# --- the access log note and the figures ---------------------------------------------
{
    my %log;
    my $cl = '';
    wait_for(sub { $cl = $h->slurp_log($h->dir . '/logs/cache_log'); $cl =~ m{^HIT GET /c/swr/x 200$}m }, 3);
    $log{$1}++ while $cl =~ /^(HIT|MISS|STALE|BYPASS) /mg;
    ok($cl =~ m{^MISS GET /c/fresh/1 200$}m && $cl =~ m{^HIT GET /c/fresh/1 200$}m,
       'the access log has the word from r->notes (%{asyncproxy-cache}n): MISS then HIT for /c/fresh/1')
        or diag substr($cl, 0, 2000);
    like($cl, qr{^HIT HEAD /c/head/1 200$}m, '... HIT for the HEAD');
    like($cl, qr{^HIT GET /c/cond/1 304$}m, '... HIT for a 304');
    like($cl, qr{^STALE GET /c/sie/x 200$}m, '... STALE');
    like($cl, qr{^BYPASS POST /c/post/1 200$}m, '... BYPASS');
    is_deeply(\%log, \%WORDS, '... one logged word per response, the same ones the clients saw')
        or diag explain { log => \%log, clients => \%WORDS };

    my %f1 = %{ figures($HP) };
    my %d = map { $_ => ($f1{$_} // 0) - ($f0{$_} // 0) } qw(CacheHits CacheMisses CacheStale CacheBypass);
    note 'figures: ' . join ' ', map { "$_=$f1{$_}" } grep { /^Cache/ } sort keys %f1;
    note 'words: ' . join ' ', map { "$_=$WORDS{$_}" } sort keys %WORDS;
    is($d{CacheHits}, $WORDS{HIT} // 0, "CacheHits counts the HITs ($d{CacheHits})");
    is($d{CacheStale}, $WORDS{STALE} // 0, "CacheStale counts the STALEs ($d{CacheStale})");
    is($d{CacheBypass}, $WORDS{BYPASS} // 0, "CacheBypass counts the BYPASSes ($d{CacheBypass})");
    cmp_ok($d{CacheMisses}, '>=', $WORDS{MISS} // 0, "CacheMisses counts at least the MISSes ($d{CacheMisses})");
    cmp_ok($f1{CacheEntries} // 0, '>', 10, "CacheEntries ($f1{CacheEntries})");
    cmp_ok($f1{CacheBytes} // 0, '>', 20480, "CacheBytes ($f1{CacheBytes})");
    cmp_ok($f1{CacheBytes} // 0, '<=', 8 * 1048576, '... within AsyncProxyCacheSize 8M');
}

ok($h->stop, 'server stops');
{
    # connection failures to the backend stopped on purpose are expected
    my @bad = grep { !/\b127\.0\.0\.1:$B2P\b/ } $h->error_lines;
    is_deeply(\@bad, [], 'no error-log line at level error or above (other than the stopped backend)')
        or diag join "\n", @bad;
}

# =================================================== 3. worker MPM smoke run
{
    my $hw = APX::Httpd->new(mpm => 'worker', threads => 10, servers => 1, server_limit => 1,
                             conf => "AsyncProxyPass /w/ http://$B/w/ cache=on\n");
    $hw->start;
    my $WP = $hw->port;
    my @r = map { call_port($WP, 'GET', '/w/fresh/1') } 1 .. 2;
    is(word($r[0]) . ' ' . word($r[1]), 'MISS HIT', '[worker] max-age=60: MISS, HIT');
    is(seq_of($r[1]), seq_of($r[0]), '[worker] ... the same body');
    my $g = call_port($WP, 'GET', '/w/text/1', 'Accept-Encoding' => 'gzip');
    my $i = call_port($WP, 'GET', '/w/text/1');
    ok($i && $i->{body} eq $TEXT && !$i->{headers}{'content-encoding'}, '[worker] 20 KB text: identity body');
    my $g2 = call_port($WP, 'GET', '/w/text/1', 'Accept-Encoding' => 'gzip');
    ok($g2 && word($g2) eq 'HIT' && ($g2->{headers}{'content-encoding'} // '') eq 'gzip'
       && gunzip_str($g2->{body}) eq $TEXT, '[worker] ... gzip HIT gunzips to it');
    my ($c) = exchange($WP, 'GET', '/w/fresh/1', 'If-None-Match' => '"f1"');
    is($c && $c->{status}, 304, '[worker] If-None-Match: 304 from the cache');
    is(bcount('/w/fresh/1') . ' ' . bcount('/w/text/1'), '1 1', '[worker] one backend request per key');
    ok($hw->stop, '[worker] server stops');
    is_deeply([$hw->error_lines], [], '[worker] no error-log line') or diag join "\n", $hw->error_lines;
}

$be->stop;
cmp_ok(time - $t_start, '<', 300, sprintf('the file ends in bounded time (%.0f s; a hang would not)', time - $t_start));
done_testing;
