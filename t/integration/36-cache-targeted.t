#!/usr/bin/perl
# CDN-Cache-Control (RFC 9213): a valid one is the cache's policy, and
# Cache-Control, Expires and Pragma are then not looked at; an invalid one
# (not a Structured Field Dictionary) is ignored as a whole. Event MPM, one
# child; asserted on what the backend saw (a second request that reached it
# was not served from the cache) and on X-AsyncProxy-Cache.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use POSIX ();

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
my $be = APX::Backend->new(handler => sub {
    my ($req) = @_;
    my ($name) = $req->{target} =~ m{^/t/([\w-]+)};
    return APX::Backend::reply($req, 200, "$req->{target} seq=$req->{seq}\n",
                               'Content-Type' => 'text/plain', @{ $CASE{$name // ''} // [] });
});
my $h = APX::Httpd->new(conf => "AsyncProxyPass /t/ http://127.0.0.1:@{[ $be->port ]}/t/\nAsyncProxyCache On\n");
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
ok($h->stop, 'server stops');
is_deeply([$h->error_lines], [], 'no error-log line at level error or above');
done_testing;
