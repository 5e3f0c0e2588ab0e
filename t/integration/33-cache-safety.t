#!/usr/bin/perl
# The response cache must hand every client what the backend said, and
# nothing a single client slipped in (event MPM, one child: every request
# meets the same per-child cache).
#   - Content-Encoding: a backend that compresses itself (always, or when
#     the request accepts gzip, with Vary: Accept-Encoding) comes back with
#     Content-Encoding: gzip and bytes that gunzip to the original, on the
#     MISS and on every HIT, with the cache's own gzip copy On and Off; the
#     other stored headers (Via, Vary, ETag, Cache-Control, a custom one)
#     are the same on the miss and the hit;
#   - poisoning through X-Forwarded-*: a client's X-Forwarded-Host/-Proto/
#     -For never reach the backend (it sees this hop's values), so a page
#     that reflects X-Forwarded-Host never holds "evil" for the next,
#     clean client; with AsyncProxyAddHeaders Off they are dropped too;
#   - AsyncProxyTrustedProxies: a peer in the list has its X-Forwarded-For
#     appended to and its -Host/-Proto passed on, and those two are part of
#     the key (two front hosts, two entries); a list that does not hold the
#     peer changes nothing; a bad address fails configtest;
#   - poisoning through the Host port: with AsyncProxyPreserveHost On, a
#     response to Host: victim:1337 is never served for Host: victim;
#   - a GET with Content-Length: 0 is cached like one without a body; a GET
#     with a body still is not;
#   - no error-log line at level error or above.
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
use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use POSIX ();

# ---------------------------------------------------------------- content
sub http_date { POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime($_[0])) }
my $TEXT = join('', map { "line $_ of a text the backend compresses itself\n" } 1 .. 300);
my $GZ;
gzip(\$TEXT => \$GZ) or die "gzip: $GzipError";

sub gunzip_str {
    my ($in) = @_;
    my $out;
    return defined $in && gunzip(\$in => \$out) ? $out : 'gunzip failed';
}

# ---------------------------------------------------------------- backend
sub reply { APX::Backend::reply(@_) }

sub backend {
    my ($req) = @_;
    my $t = $req->{target};
    my $seq = $req->{seq};
    my @ma60 = ('Cache-Control' => 'max-age=60');
    if ($t =~ m{/gzalways/}) {
        # a precompressed representation, whatever the request accepts
        return reply($req, 200, $GZ, @ma60, 'Content-Type' => 'text/plain', 'Content-Encoding' => 'gzip',
                     'ETag' => '"ga1"', 'X-Origin' => "seq=$seq");
    }
    if ($t =~ m{/gzae/}) {
        # compresses when the request accepts it, and says so in Vary
        my $ae = $req->{hdr}{'accept-encoding'} // '';
        my @h = (@ma60, 'Content-Type' => 'text/plain', 'Vary' => 'Accept-Encoding', 'X-Origin' => "seq=$seq");
        return reply($req, 200, $GZ, @h, 'Content-Encoding' => 'gzip', 'ETag' => '"ae-gz"') if $ae =~ /gzip/;
        return reply($req, 200, $TEXT, @h, 'ETag' => '"ae-id"');
    }
    if ($t =~ m{/reflect/}) {
        # a page that builds its links from what the proxy said
        my $body = join(' ', map { "$_=" . ($req->{hdr}{$_} // '-') }
                        qw(host x-forwarded-host x-forwarded-proto x-forwarded-for)) . " seq=$seq\n";
        return reply($req, 200, $body, @ma60, 'Content-Type' => 'text/html');
    }
    if ($t =~ m{/badvary/}) {
        # a Vary that names no field: no key can tell the variants apart
        return reply($req, 200, 'x-a=' . ($req->{hdr}{'x-a'} // '-') . " seq=$seq\n", @ma60,
                     'Content-Type' => 'text/plain', 'Vary' => 'X-A B');
    }
    if ($t =~ m{/fresh-info/(\w+)}) {
        # freshness information RFC 9111 calls invalid: stale on arrival
        my $kind = $1;
        my $in60 = http_date(time + 60);
        my @h = $kind eq 'pst'   ? ('Expires' => ($in60 =~ s/GMT$/PST/r))
              : $kind eq 'nocomma' ? ('Expires' => ($in60 =~ s/,//r))
              : $kind eq 'twoexp' ? ('Expires' => $in60, 'Expires' => http_date(time + 120))
              : $kind eq 'dupma' ? ('Cache-Control' => 'max-age=60, max-age=60')
              : $kind eq 'junkma' ? ('Cache-Control' => 'max-age=60s')
              :                    ('Expires' => $in60);    # 'good'
        return reply($req, 200, "$kind seq=$seq\n", 'Content-Type' => 'text/plain', @h);
    }
    return reply($req, 200, "$req->{method} $t seq=$seq\n", @ma60, 'Content-Type' => 'text/plain');
}

my $be = APX::Backend->new(handler => \&backend);
my $B = '127.0.0.1:' . $be->port;

sub bcount { my ($target) = @_; return scalar grep { $_->{target} eq $target } $be->requests }
sub breqs  { my ($target) = @_; return grep { $_->{target} eq $target } $be->requests }
sub word   { my ($r) = @_; return $r ? $r->{headers}{'x-asyncproxy-cache'} // 'no header' : 'no response' }
sub seq_of { my ($r) = @_; return $r && $r->{body} =~ /seq=(\d+)/ ? $1 : -1 }

# =================================================== configuration
{
    for my $bad ('bogus', '10.0.0.0/40', '127.0.0.1/abc') {
        my $h = APX::Httpd->new(mpm => 'event', conf => "AsyncProxyTrustedProxies 10.0.0.1 $bad");
        my ($rc, $out) = $h->configtest;
        isnt($rc, 0, "configtest fails: AsyncProxyTrustedProxies 10.0.0.1 $bad");
        like($out, qr/AsyncProxyTrustedProxies\b.*\Q$bad\E/, '... naming the directive and the value') or diag $out;
    }
    my $h = APX::Httpd->new(mpm => 'event',
                            global => "AsyncProxyTrustedProxies 10.0.0.0/8 192.168.1.0/255.255.255.0 ::1 fd00::/8",
                            conf => "AsyncProxyTrustedProxies 127.0.0.1");
    my ($rc, $out) = $h->configtest;
    is($rc, 0, 'AsyncProxyTrustedProxies with addresses, CIDR, netmask and IPv6 passes') or diag $out;
}

# =================================================== the server
my $P2 = APX::Httpd::free_port();    # trusts 127.0.0.1
my $P3 = APX::Httpd::free_port();    # trusts another network
my $P4 = APX::Httpd::free_port();    # AsyncProxyAddHeaders Off
my $conf = <<"EOF";
AsyncProxyPreserveHost On
AsyncProxyPass /g/ http://$B/g/ cache=on
AsyncProxyPass /nc/ http://$B/nc/
<Location /n/>
    AsyncProxyPass http://$B/n/ cache=on
    AsyncProxyCacheGzip Off
</Location>
EOF
my $global = <<"EOF";
AsyncProxyCacheSize 8M
Listen 127.0.0.1:$P2
Listen 127.0.0.1:$P3
Listen 127.0.0.1:$P4
<VirtualHost 127.0.0.1:$P2>
    ServerName trusted.test
    AsyncProxyTrustedProxies 10.0.0.0/8 127.0.0.1
    AsyncProxyPass /t/ http://$B/t/ cache=on
</VirtualHost>
<VirtualHost 127.0.0.1:$P3>
    ServerName untrusted.test
    AsyncProxyTrustedProxies 10.0.0.0/8 ::1
    AsyncProxyPass /u/ http://$B/u/ cache=on
</VirtualHost>
<VirtualHost 127.0.0.1:$P4>
    ServerName noheaders.test
    AsyncProxyAddHeaders Off
    AsyncProxyPass /o/ http://$B/o/ cache=on
</VirtualHost>
EOF
my $h = APX::Httpd->new(mpm => 'event', threads => 25, servers => 1, server_limit => 1,
                        conf => $conf, global => $global);
$h->start;
my $HP = $h->port;

sub get { my ($port, $path, @hdr) = @_; return http_request($port, 'GET', $path, headers => \@hdr) }

# =================================================== Content-Encoding
{
    my @cases = (
        # path, what, request headers, the stored entry is gzip-coded
        ['/g/gzalways/1', 'a backend that always sends gzip, AsyncProxyCacheGzip On',  ['Accept-Encoding' => 'gzip']],
        ['/g/gzalways/2', '... the same to a client without Accept-Encoding',       []],
        ['/n/gzalways/1', 'a backend that always sends gzip, AsyncProxyCacheGzip Off', ['Accept-Encoding' => 'gzip']],
        ['/n/gzae/1',     'a backend that compresses for gzip clients (Vary), AsyncProxyCacheGzip Off',
         ['Accept-Encoding' => 'gzip']],
    );
    for my $c (@cases) {
        my ($path, $what, $hdr) = @$c;
        my $m = get($HP, $path, @$hdr);
        my $hit1 = get($HP, $path, @$hdr);
        my $hit2 = get($HP, $path, @$hdr);
        is(word($m) . ' ' . word($hit1) . ' ' . word($hit2), 'MISS HIT HIT', "$what: MISS, HIT, HIT");
        for my $r (['the miss', $m], ['the first hit', $hit1], ['the second hit', $hit2]) {
            my ($n, $x) = @$r;
            is($x && $x->{headers}{'content-encoding'}, 'gzip', "... $n: Content-Encoding: gzip");
            ok($x && gunzip_str($x->{body}) eq $TEXT, "... $n: the body gunzips to the original");
            like($x && $x->{headers}{via} // '', qr/^1\.1 \S+$/, "... $n: Via is ours (" . ($x && $x->{headers}{via} // 'none') . ')');
        }
        for my $f (qw(content-type etag cache-control vary x-origin via content-length)) {
            is($hit1 && $hit1->{headers}{$f}, $m && $m->{headers}{$f},
               "... the hit's $f is the miss's (" . ($m && $m->{headers}{$f} // 'none') . ')');
        }
        is(bcount($path), 1, '... one backend request');
    }
    # the same key without gzip: a variant of its own, identity
    my $i1 = get($HP, '/n/gzae/1');
    my $i2 = get($HP, '/n/gzae/1');
    is(word($i1) . ' ' . word($i2), 'MISS HIT',
       'the Vary: Accept-Encoding backend, a client without Accept-Encoding: its own variant (MISS, HIT)');
    ok($i2 && !exists $i2->{headers}{'content-encoding'} && $i2->{body} eq $TEXT,
       '... identity, the original bytes');
    is($i2 && $i2->{headers}{etag}, '"ae-id"', "... the identity representation's ETag");
    my $g3 = get($HP, '/n/gzae/1', 'Accept-Encoding' => 'gzip');
    ok($g3 && word($g3) eq 'HIT' && ($g3->{headers}{'content-encoding'} // '') eq 'gzip'
       && gunzip_str($g3->{body}) eq $TEXT, '... and the gzip client still gets its gzip HIT');
    is(bcount('/n/gzae/1'), 2, '... two backend requests, one per variant');
    # with the cache's own gzip On the fetch asks for identity: the backend
    # compresses nothing, the cache does
    my $a1 = get($HP, '/g/gzae/1', 'Accept-Encoding' => 'gzip');
    my $a2 = get($HP, '/g/gzae/1');
    my ($areq) = breqs('/g/gzae/1');
    ok($areq && !exists $areq->{hdr}{'accept-encoding'}, 'AsyncProxyCacheGzip On: the fetch carries no Accept-Encoding');
    ok($a1 && ($a1->{headers}{'content-encoding'} // '') eq 'gzip' && gunzip_str($a1->{body}) eq $TEXT,
       '... the gzip client gets our gzip copy, which gunzips to the original');
    ok($a2 && word($a2) eq 'HIT' && !exists $a2->{headers}{'content-encoding'} && $a2->{body} eq $TEXT,
       '... the identity client a HIT with the original bytes');
    is(bcount('/g/gzae/1'), 1, '... one backend request');
}

# =================================================== X-Forwarded-* (untrusted)
{
    my $path = '/g/reflect/1';
    my $evil = get($HP, $path, 'X-Forwarded-Host' => 'evil.example', 'X-Forwarded-Proto' => 'https',
                   'X-Forwarded-For' => '6.6.6.6');
    is(word($evil), 'MISS', 'a client sending X-Forwarded-Host: evil.example (and -Proto, -For): MISS');
    my ($seen) = breqs($path);
    is($seen && $seen->{hdr}{'x-forwarded-host'}, "127.0.0.1:$HP", '... the backend sees the Host it came with');
    is($seen && $seen->{hdr}{'x-forwarded-proto'}, 'http', '... our scheme');
    is($seen && $seen->{hdr}{'x-forwarded-for'}, '127.0.0.1', '... and the client address only');
    my $clean = get($HP, $path);
    is(word($clean), 'HIT', 'the next, clean client: HIT');
    unlike($clean && $clean->{body} // 'none', qr/evil|https|6\.6\.6\.6/, '... which holds nothing of the first client\'s fields')
        or diag $clean->{body};
    like($clean && $clean->{body} // '', qr/x-forwarded-host=127\.0\.0\.1:$HP /, '... but the real host');

    my $oh = get($P4, '/o/reflect/1', 'Host' => 'noheaders.test', 'X-Forwarded-Host' => 'evil.example',
                 'X-Forwarded-For' => '6.6.6.6', 'X-Forwarded-Proto' => 'https');
    my ($os) = breqs('/o/reflect/1');
    ok($os && !grep({ exists $os->{hdr}{$_} } qw(x-forwarded-host x-forwarded-for x-forwarded-proto)),
       'AsyncProxyAddHeaders Off: the client\'s X-Forwarded-* are dropped, none sent');
    my $oc = get($P4, '/o/reflect/1', 'Host' => 'noheaders.test');
    unlike($oc && $oc->{body} // 'none', qr/evil/, '... and the clean client never sees evil (' . word($oc) . ')');

    my $u = get($P3, '/u/reflect/1', 'Host' => 'untrusted.test', 'X-Forwarded-Host' => 'evil.example',
                'X-Forwarded-For' => '6.6.6.6');
    my ($us) = breqs('/u/reflect/1');
    is($us && $us->{hdr}{'x-forwarded-host'} . ' ' . $us->{hdr}{'x-forwarded-for'}, 'untrusted.test 127.0.0.1',
       'AsyncProxyTrustedProxies without this peer: its X-Forwarded-* are replaced all the same');
}

# =================================================== X-Forwarded-* (trusted peer)
{
    my $path = '/t/reflect/1';
    my $a = get($P2, $path, 'Host' => 'trusted.test', 'X-Forwarded-Host' => 'front-a.example',
                'X-Forwarded-Proto' => 'https', 'X-Forwarded-For' => '10.9.8.7');
    my ($as) = breqs($path);
    is($as && $as->{hdr}{'x-forwarded-for'}, '10.9.8.7, 127.0.0.1', 'a trusted peer: X-Forwarded-For appended to');
    is($as && $as->{hdr}{'x-forwarded-host'}, 'front-a.example', '... X-Forwarded-Host passed on');
    is($as && $as->{hdr}{'x-forwarded-proto'}, 'https', '... X-Forwarded-Proto passed on');
    my $b = get($P2, $path, 'Host' => 'trusted.test', 'X-Forwarded-Host' => 'front-b.example',
                'X-Forwarded-Proto' => 'https');
    my $a2 = get($P2, $path, 'Host' => 'trusted.test', 'X-Forwarded-Host' => 'front-a.example',
                 'X-Forwarded-Proto' => 'https');
    my $plain = get($P2, $path, 'Host' => 'trusted.test');
    is(word($a) . ' ' . word($b) . ' ' . word($a2) . ' ' . word($plain), 'MISS MISS HIT MISS',
       '... the forwarded host is part of the key: front-a MISS, front-b MISS, front-a HIT, none MISS');
    like($b && $b->{body} // '', qr/x-forwarded-host=front-b\.example /, '... front-b gets its own page');
    like($a2 && $a2->{body} // '', qr/x-forwarded-host=front-a\.example /, '... front-a its own');
    like($plain && $plain->{body} // '', qr/x-forwarded-host=trusted\.test x-forwarded-proto=http /,
         '... and a request without them the Host it came with and our scheme');
}

# =================================================== the Host port
{
    my $path = '/g/reflect/port';
    my $v1 = get($HP, $path, 'Host' => 'victim:1337');
    like($v1 && $v1->{body} // '', qr/^host=victim:1337 /, 'Host: victim:1337 (AsyncProxyPreserveHost On): the page reflects the port');
    my $v2 = get($HP, $path, 'Host' => 'victim');
    is(word($v2), 'MISS', 'Host: victim next: a MISS, not the victim:1337 entry');
    like($v2 && $v2->{body} // '', qr/^host=victim x-forwarded-host=victim /, '... its own page, no port');
    my $v3 = get($HP, $path, 'Host' => 'victim:1337');
    my $v4 = get($HP, $path, 'Host' => 'victim');
    is(word($v3) . ' ' . word($v4), 'HIT HIT', '... then each its own HIT');
    is(seq_of($v4), seq_of($v2), '... the port-less one with the port-less page');
    is(bcount($path), 2, '... two backend requests');
}

# =================================================== request bodies
{
    my $r1 = http_request($HP, 'GET', '/g/cl0/1', headers => ['Content-Length' => '0']);
    my $r2 = http_request($HP, 'GET', '/g/cl0/1', headers => ['Content-Length' => '0']);
    my $r3 = get($HP, '/g/cl0/1');
    is(word($r1) . ' ' . word($r2) . ' ' . word($r3), 'MISS HIT HIT', 'GET with Content-Length: 0: MISS, HIT (and HIT without it)');
    is(bcount('/g/cl0/1'), 1, '... one backend request');
    # keep-alive: the empty body leaves nothing in the connection
    my $s = connect_to($HP);
    send_raw($s, "GET /g/cl0/1 HTTP/1.1\r\nHost: 127.0.0.1:$HP\r\nContent-Length: 0\r\n\r\n"
               . "GET /g/cl0/2 HTTP/1.1\r\nHost: 127.0.0.1:$HP\r\nConnection: close\r\n\r\n");
    my $buf = '';
    my $k1 = read_response($s, \$buf);
    my $k2 = read_response($s, \$buf);
    close $s;
    is(word($k1) . ' ' . word($k2), 'HIT MISS', '... on a keep-alive connection, the next request follows (HIT, MISS)');
    like($k2 && $k2->{body} // '', qr{^GET /g/cl0/2 }, '... with its own answer');

    my $b1 = http_request($HP, 'GET', '/g/body/1', body => 'hello');
    my $b2 = http_request($HP, 'GET', '/g/body/1', body => 'hello');
    is(word($b1) . ' ' . word($b2), 'BYPASS BYPASS', 'GET with a 5-byte body: BYPASS, BYPASS');
    is(bcount('/g/body/1'), 2, '... both reached the backend');
}

# =================================================== invalid freshness information
{
    for my $c (['good', 'Expires in 60 s', 'MISS HIT'],
               ['pst', 'Expires in 60 s with the zone PST', 'BYPASS BYPASS'],
               ['nocomma', 'Expires in 60 s without the comma', 'BYPASS BYPASS'],
               ['twoexp', 'two Expires lines', 'BYPASS BYPASS'],
               ['dupma', 'Cache-Control: max-age=60, max-age=60', 'BYPASS BYPASS'],
               ['junkma', 'Cache-Control: max-age=60s', 'BYPASS BYPASS']) {
        my ($kind, $what, $want) = @$c;
        my $path = "/g/fresh-info/$kind";
        my $r1 = get($HP, $path);
        my $r2 = get($HP, $path);
        is(word($r1) . ' ' . word($r2), $want, "$what: $want" . ($want =~ /BYPASS/ ? ' (stale on arrival)' : ''));
        is(bcount($path), $want =~ /HIT/ ? 1 : 2, '... ' . ($want =~ /HIT/ ? 'one backend request' : 'both reached the backend'));
    }
}

# =================================================== a Vary that cannot be keyed
{
    my $a = get($HP, '/g/badvary/1', 'X-A' => 'one');
    my $b = get($HP, '/g/badvary/1', 'X-A' => 'two');
    is(word($a) . ' ' . word($b), 'BYPASS BYPASS', 'Vary: "X-A B" (not a list of field names): BYPASS, BYPASS');
    like($b && $b->{body} // '', qr/^x-a=two /, '... the second client gets its own answer, not the first one\'s');
}

ok($h->stop, 'server stops');
is_deeply([$h->error_lines], [], 'no error-log line at level error or above') or diag join "\n", $h->error_lines;
$be->stop;
done_testing;
