#!/usr/bin/perl
# Cache hits go through httpd's output filters like any response:
#   - over TLS (mod_ssl), a MISS and then HITs on the same and on new TLS
#     connections, small and large (300 KB, served in slices) bodies, the
#     gzip copy and its decompression;
#   - mod_headers' `Header set` applies to hits as to misses;
#   - the access log records hits with their real status and size, and the
#     asyncproxy-cache note (%{asyncproxy-cache}n).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);

my $have_ssl = eval { require IO::Socket::SSL; 1 };
plan skip_all => 'IO::Socket::SSL is not installed' unless $have_ssl;

my $SMALL = join('', map { "line $_ of a cached text body\n" } 1 .. 40);
my $LARGE = join('', map { sprintf "%06d %s\n", $_, 'y' x 50 } 1 .. 5000);   # ~290 KB
my $b = APX::Backend->new(handler => sub {
    my ($req) = @_;
    my $t = $req->{target};
    return APX::Backend::response(200, $SMALL, 'Content-Type' => 'text/plain',
                                  'Cache-Control' => 'max-age=60', 'ETag' => '"s1"') if $t eq '/small';
    return APX::Backend::response(200, $LARGE, 'Content-Type' => 'application/octet-stream',
                                  'Cache-Control' => 'max-age=60') if $t eq '/large';
    return APX::Backend::response(404, "no\n");
});
my $bport = $b->port;

my $h = APX::Httpd->new(mpm => 'event', threads => 10, tls => 1, modules => ['headers'],
                        global => "AsyncProxyCacheMaxObject 1M\n",
                        conf => <<"CONF");
AsyncProxyPass /c/ http://127.0.0.1:$bport/ cache=on
Header set X-Filtered yes
LogFormat "%>s %b \\"%r\\" %{asyncproxy-cache}n" cachelog
CustomLog logs/cache_log cachelog
CONF
$h->start;

sub tls_get {
    my ($path, %hdr) = @_;
    my $s = connect_tls($h->port);
    my @r;
    for my $i (0 .. ($hdr{repeat} // 1) - 1) {
        my %h2 = %hdr;
        delete $h2{repeat};
        print $s get_req($path, %h2);
        my $buf = '';
        push @r, read_response($s, \$buf, timeout => 10);
    }
    close $s;
    return wantarray ? @r : $r[0];
}
sub word { my ($r) = @_; $r && $r->{headers}{'x-asyncproxy-cache'} // 'none' }

my $m = tls_get('/c/small');
is($m && $m->{status}, 200, 'TLS: first request 200');
is(word($m), 'MISS', '... MISS');
is($m && $m->{body}, $SMALL, '... the body');
my @k = tls_get('/c/small', repeat => 3);
is(join(' ', map { word($_) } @k), 'HIT HIT HIT', 'TLS keep-alive: three HITs on one connection');
is(scalar(grep { $_ && $_->{body} eq $SMALL } @k), 3, '... each with the whole body');
is(scalar(grep { $_ && ($_->{headers}{'x-filtered'} // '') eq 'yes' } ($m, @k)), 4,
   'mod_headers applies to the MISS and the HITs');
my $z = tls_get('/c/small', 'Accept-Encoding' => 'gzip');
is(word($z), 'HIT', 'TLS gzip client: HIT');
is($z && $z->{headers}{'content-encoding'}, 'gzip', '... Content-Encoding: gzip');
my $plain;
gunzip(\($z->{body}) => \$plain) or diag $GunzipError if $z;
is($plain, $SMALL, '... decompresses to the backend body');

my $l1 = tls_get('/c/large');
my @l2 = tls_get('/c/large', repeat => 2);
is(word($l1), 'MISS', 'TLS large body: MISS');
ok($l1 && $l1->{body} eq $LARGE, '... whole and correct (' . length($l1 && $l1->{body} // '') . ' bytes)');
is(join(' ', map { word($_) } @l2), 'HIT HIT', '... then HITs on one keep-alive connection');
is(scalar(grep { $_ && $_->{body} eq $LARGE } @l2), 2, '... each whole and correct');
is(scalar(grep { $_->{target} eq '/large' } $b->requests), 1, '... one backend request');

my $small_hits = 4;
# request directives: only-if-cached (RFC 9111 5.2.1.7), a GET with a body
my $o1 = tls_get('/c/cold', 'Cache-Control' => 'only-if-cached');
is($o1 && $o1->{status}, 504, 'only-if-cached, nothing stored: 504');
is(scalar(grep { $_->{target} eq '/cold' } $b->requests), 0, '... the backend was not asked');
my $o2 = tls_get('/c/small', 'Cache-Control' => 'only-if-cached');
is(word($o2), 'HIT', 'only-if-cached, stored: HIT');
{
    my $s = connect_tls($h->port);
    print $s "GET /c/small HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello" . get_req('/c/small');
    my $buf = '';
    my $r1 = read_response($s, \$buf, timeout => 10);
    my $r2 = read_response($s, \$buf, timeout => 10);
    close $s;
    is(word($r1), 'BYPASS', 'a GET with a body: BYPASS (its body reaches the backend)');
    is($r1 && $r1->{body}, $SMALL, '... answered');
    ok(!$r2 || word($r2) eq 'HIT', '... and its body was never taken for the next request');
    $small_hits = 5 + ($r2 ? 1 : 0);
}

my @log;
wait_for(sub { @log = grep { m{/c/} } split /\n/, $h->slurp_log($h->dir . '/logs/cache_log'); @log >= 9 + $small_hits - 4 }, 3);
is(scalar(grep { m{^200 \d+ "GET /c/small HTTP/1.1" HIT$} } @log), $small_hits, "access log: the $small_hits small HITs, 200 with a size");
is(scalar(grep { m{^200 (\d+) "GET /c/large HTTP/1.1" HIT$} && $1 == length $LARGE } @log), 2,
   'access log: the large HITs with their full size');
is(scalar(grep { m{ MISS$} } @log), 2, 'access log: two MISS');

ok($h->stop, 'server stops');
is_deeply([$h->error_lines], [], 'no error-log line at level error or above') or diag join "\n", $h->error_lines;
$b->stop;
done_testing;
