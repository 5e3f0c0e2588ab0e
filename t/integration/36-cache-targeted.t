#!/usr/bin/perl
# CDN-Cache-Control (RFC 9213): a valid one is the cache's policy, and
# Cache-Control, Expires and Pragma are then not looked at; an invalid one
# (not a Structured Field Dictionary) is ignored as a whole.
# AsyncProxyCacheStaleOnError (default 10m): a stale entry is served when
# the backend answers 5xx or closes without an answer, unless it said
# must-revalidate (then the failure goes through), and not with the
# directive off; one with a validator is still revalidated with a
# conditional request first (a 304 refreshes it).
# Event MPM, one child; asserted on what the backend saw (a second request
# that reached it was not served from the cache) and on X-AsyncProxy-Cache.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use POSIX ();
use Time::HiRes qw(sleep);

sub http_date { POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime($_[0])) }

# /t/NAME: the headers of case NAME
my %CASE = (
    'cdn-fresh-cc-nostore' => ['Cache-Control' => 'no-store', 'CDN-Cache-Control' => 'max-age=600'],
    'cdn-nostore-cc-fresh' => ['Cache-Control' => 'max-age=600', 'CDN-Cache-Control' => 'no-store',
                               'Expires' => http_date(time + 600)],
    'cdn-private'          => ['Cache-Control' => 'max-age=600', 'CDN-Cache-Control' => 'private'],
    'cdn-zero-expires'     => ['CDN-Cache-Control' => 'max-age=0', 'Expires' => http_date(time + 600)],
    'cdn-zero-pragma'      => ['CDN-Cache-Control' => 'max-age=600', 'Pragma' => 'no-cache'],
    'cdn-invalid'          => ['Cache-Control' => 'no-store', 'CDN-Cache-Control' => 'max-age=600, &&&'],
    'cdn-uppercase-key'    => ['Cache-Control' => 'no-store', 'CDN-Cache-Control' => 'Max-Age=600'],
    'cdn-string-value'     => ['Cache-Control' => 'max-age=600', 'CDN-Cache-Control' => 'max-age="600"'],
    'cdn-two-lines'        => ['Cache-Control' => 'no-store', 'CDN-Cache-Control' => 'private',
                               'CDN-Cache-Control' => 'max-age=600'],
    'cc-only'              => ['Cache-Control' => 'max-age=600'],
);
# /s/...: max-age=1 entries, then the backend fails as /tmp file $FAIL says
my $FAIL = "/tmp/apx-36-fail-$$";
END { unlink $FAIL }
sub fail_as { open my $f, '>', $FAIL or die; print $f $_[0]; close $f }
fail_as('');
my $be = APX::Backend->new(handler => sub {
    my ($req, $conn) = @_;
    if ($req->{target} =~ m{^/s/}) {
        open my $f, '<', $FAIL; my $mode = <$f> // '';
        if ($mode eq 'close') { close $conn->{sock}; return undef }
        if ($mode eq '500') {
            return APX::Backend::reply($req, 500, "backend error\n", 'Content-Type' => 'text/plain');
        }
        if ($mode eq '304' && ($req->{hdr}{'if-none-match'} // '') eq '"v1"') {
            return "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=1\r\n\r\n";
        }
        my @cc = ('Cache-Control' => $req->{target} =~ /mustrev/ ? 'max-age=1, must-revalidate' : 'max-age=1');
        push @cc, ('ETag' => '"v1"') if $req->{target} =~ /etag/;
        return APX::Backend::reply($req, 200, "$req->{target} seq=$req->{seq}\n", 'Content-Type' => 'text/plain', @cc);
    }
    my ($name) = $req->{target} =~ m{^/t/([\w-]+)};
    return APX::Backend::reply($req, 200, "$req->{target} seq=$req->{seq}\n",
                               'Content-Type' => 'text/plain', @{ $CASE{$name // ''} // [] });
});
my $BP = $be->port;
my $h = APX::Httpd->new(conf => <<"EOF");
AsyncProxyPass /t/ http://127.0.0.1:$BP/t/
AsyncProxyPass /s/ http://127.0.0.1:$BP/s/
AsyncProxyCache On
<Location /s/off/>
    AsyncProxyCacheStaleOnError off
</Location>
EOF
$h->start;

# expected: 1 = the second request is a HIT (one backend fetch), 0 = both
# reach the backend
my @expect = (
    ['cdn-fresh-cc-nostore', 1, 'CDN-Cache-Control: max-age=600 wins over Cache-Control: no-store'],
    ['cdn-nostore-cc-fresh', 0, 'CDN-Cache-Control: no-store wins over a fresh Cache-Control and Expires'],
    ['cdn-private',          0, 'CDN-Cache-Control: private is not stored'],
    ['cdn-zero-expires',     0, 'CDN-Cache-Control: max-age=0 wins over a future Expires'],
    ['cdn-zero-pragma',      1, 'with CDN-Cache-Control, Pragma: no-cache is not looked at'],
    ['cdn-invalid',          0, 'an invalid CDN-Cache-Control (no Dictionary) is ignored: Cache-Control: no-store applies'],
    ['cdn-uppercase-key',    0, '... as is one with an uppercase key'],
    ['cdn-string-value',     0, 'a max-age of the wrong type (a String) is no freshness, and Cache-Control is still not looked at'],
    ['cdn-two-lines',        0, 'two CDN-Cache-Control lines are one Dictionary (private, max-age=600): private'],
    ['cc-only',              1, 'without CDN-Cache-Control, Cache-Control as before'],
);
for my $e (@expect) {
    my ($name, $hit, $what) = @$e;
    my $r1 = http_request($h->port, 'GET', "/t/$name");
    my $r2 = http_request($h->port, 'GET', "/t/$name");
    my $fetches = grep { $_->{target} eq "/t/$name" } $be->requests;
    is($fetches, $hit ? 1 : 2, "$what: backend fetches") or diag explain [$r1 && $r1->{headers}, $r2 && $r2->{headers}];
    my $word = $r2 ? $r2->{headers}{'x-asyncproxy-cache'} // '' : 'no response';
    if ($hit) { is($word, 'HIT', '... the second answer says HIT') }
    else      { isnt($word, 'HIT', "... the second answer is no HIT ($word)") }
    is($r2 && $r2->{status}, 200, '... 200');
}

# ---- stale on error --------------------------------------------------------
my @paths = qw(/s/plain /s/mustrev /s/off/x /s/etag /s/close /s/off/close);
my %first = map { $_ => http_request($h->port, 'GET', $_) } @paths;
is(scalar(grep { $_ && $_->{status} == 200 } values %first), scalar @paths, 'the max-age=1 entries are primed');
sleep 1.3;
sub fetches { my ($p) = @_; return scalar grep { $_->{target} eq $p } $be->requests }
fail_as('500');
my $r = http_request($h->port, 'GET', '/s/plain');
is($r && $r->{status}, 200, 'stale, the backend answers 500: 200 (AsyncProxyCacheStaleOnError, default)');
is($r && $r->{headers}{'x-asyncproxy-cache'}, 'STALE', '... STALE');
is($r && $r->{body}, $first{'/s/plain'}{body}, '... the stored body');
is(fetches('/s/plain'), 2, '... after asking the backend');
$r = http_request($h->port, 'GET', '/s/mustrev');
is($r && $r->{status}, 500, 'must-revalidate: the 500 goes through');
$r = http_request($h->port, 'GET', '/s/off/x');
is($r && $r->{status}, 500, 'AsyncProxyCacheStaleOnError off: the 500 goes through');
$r = http_request($h->port, 'GET', '/s/etag');
is($r && $r->{status}, 200, 'with an ETag, the backend answers 500: 200, stale');
my ($cond) = grep { $_->{target} eq '/s/etag' } reverse $be->requests;
is($cond && $cond->{hdr}{'if-none-match'}, '"v1"', '... the backend was asked conditionally first');
fail_as('close');
$r = http_request($h->port, 'GET', '/s/close');
is($r && $r->{status}, 200, 'stale, the backend closes without an answer: 200');
is($r && $r->{headers}{'x-asyncproxy-cache'}, 'STALE', '... STALE');
$r = http_request($h->port, 'GET', '/s/off/close');
is($r && $r->{status}, 502, '... with the directive off: 502');
fail_as('304');
$r = http_request($h->port, 'GET', '/s/etag');
is($r && $r->{status}, 200, 'with an ETag, the backend answers 304: 200');
is($r && $r->{headers}{'x-asyncproxy-cache'}, 'REVALIDATED', '... REVALIDATED');
is($r && $r->{body}, $first{'/s/etag'}{body}, '... the stored body');
fail_as('');

ok($h->stop, 'server stops');
is_deeply([$h->error_lines(qr/APX00(?:100|10[0-9]|11\d|12\d)|closed the connection|backend/)], [],
          'no error-log line at level error or above but the backend failures');
done_testing;
