#!/usr/bin/perl
# Revalidation (RFC 9111 section 4.3), as the backend and the clients see
# it (event MPM, one child):
#   - Cache-Control: no-cache with an ETag is stored and revalidated before
#     every use: the backend gets If-None-Match with the stored tag (and
#     If-Modified-Since with a Last-Modified), answers 304, the client gets
#     200 with the stored body (REVALIDATED) and the header fields the 304
#     updated; a changed resource (200) replaces the entry;
#   - a stale max-age=1 entry with must-revalidate, validated by
#     Last-Modified only: If-Modified-Since, 304, then fresh again (HIT);
#   - the client's own conditionals are answered from the revalidated entry
#     (304 to the client) and never reach the backend;
#   - a 304 naming another ETag updates nothing: the cache asks again
#     without conditionals and stores the full answer;
#   - Vary: the conditional request carries the request's X-Lang, and each
#     variant is revalidated with its own tag;
#   - no-cache without a validator is not stored (BYPASS);
#   - 30 concurrent requests for a no-cache key make ONE conditional
#     request; all get the body;
#   - a stale-while-revalidate refresh is conditional too;
#   - no error-log line at level error or above.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use POSIX ();
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);

sub http_date { POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime($_[0])) }
my $LM = http_date(1668499951);

my $CTL = tempdir('apx-revctl-XXXXXX', TMPDIR => 1, CLEANUP => 1);
sub ctl_name { my ($n) = @_; $n =~ s{\W}{_}g; return "$CTL/$n" }
sub ctl { open my $fh, '<', ctl_name($_[0]) or return ''; local $/; my $v = <$fh>; return $v // '' }
sub set_ctl { open my $fh, '>', ctl_name($_[0]) or die; print $fh $_[1]; close $fh }

sub backend {
    my ($req) = @_;
    my $t = $req->{target};
    my $seq = $req->{seq};
    my ($path) = $t =~ m{^([^?]*)};
    my $version = ctl($path) || 'v1';
    my $inm = $req->{hdr}{'if-none-match'};
    my $ims = $req->{hdr}{'if-modified-since'};
    my @txt = ('Content-Type' => 'text/plain', 'X-Seq' => $seq);
    if ($t =~ m{/nc/}) {
        # no-cache, an ETag per version
        my $tag = qq("$version");
        $tag = '"other"' if $inm && $t =~ m{/nc/mismatch} && $version eq 'v1' && ctl("$path-304other");
        if ($inm && $inm eq qq("$version") && $t =~ m{/slow}) {
            # held until the test saw every other request park on this one
            my $until = time + 10;
            sleep 0.02 until -e ctl_name('release') || time > $until;
        }
        return [[send => APX::Backend::response(304, '', 'ETag' => $tag, 'Cache-Control' => 'no-cache',
                                                'X-Seq' => $seq, 'X-Updated' => "by-304-$seq")]]
            if $inm && $inm eq qq("$version");
        return APX::Backend::response(200, "$version body seq=$seq\n", @txt, 'ETag' => qq("$version"),
                                      'Cache-Control' => 'no-cache', 'X-Updated' => "by-200-$seq");
    }
    if ($t =~ m{/ncnoval/}) {
        return APX::Backend::response(200, "no validator seq=$seq\n", @txt, 'Cache-Control' => 'no-cache');
    }
    if ($t =~ m{/lm/}) {
        # must-revalidate, max-age=1, Last-Modified only
        return APX::Backend::response(304, '', 'Cache-Control' => 'max-age=60, must-revalidate', 'X-Seq' => $seq)
            if $ims && $ims eq $LM && !$inm;
        return APX::Backend::response(200, "lm body seq=$seq\n", @txt, 'Last-Modified' => $LM,
                                      'Cache-Control' => 'max-age=1, must-revalidate');
    }
    if ($t =~ m{/vary/}) {
        my $lang = $req->{hdr}{'x-lang'} // 'none';
        my @h = ('Cache-Control' => 'no-cache', 'Vary' => 'X-Lang', 'ETag' => qq("$lang-1"));
        return APX::Backend::response(304, '', @h, 'X-Seq' => $seq) if $inm && $inm eq qq("$lang-1");
        return APX::Backend::response(200, "lang=$lang seq=$seq\n", @txt, @h);
    }
    if ($t =~ m{/swr/}) {
        my @h = ('Cache-Control' => 'max-age=1, stale-while-revalidate=30', 'ETag' => '"s1"');
        # the 304 makes it fresh for a minute: the test's next request is a HIT
        return APX::Backend::response(304, '', 'Cache-Control' => 'max-age=60', 'ETag' => '"s1"',
                                      'X-Seq' => $seq, 'X-Updated' => "by-304-$seq")
            if $inm && $inm eq '"s1"';
        return APX::Backend::response(200, "swr body seq=$seq\n", @txt, @h);
    }
    return APX::Backend::response(404, "no\n");
}

my $be = APX::Backend->new(handler => \&backend);
my $B = '127.0.0.1:' . $be->port;
my $h = APX::Httpd->new(mpm => 'event', threads => 25, servers => 1, server_limit => 1,
                        conf => "AsyncProxyPass /c/ http://$B/c/ cache=on\n",
                        global => "AsyncProxyCacheSize 8M\n");
$h->start;
my $HP = $h->port;

sub word { my ($r) = @_; return $r ? $r->{headers}{'x-asyncproxy-cache'} // 'no header' : 'no response' }
sub get  { my ($path, @h) = @_; return http_request($HP, 'GET', $path, headers => \@h) }
sub breqs { my ($path) = @_; return grep { $_->{target} eq $path } $be->requests }

# --- no-cache + ETag ---------------------------------------------------------------
{
    my $p = '/c/nc/1';
    my $m = get($p);
    is(word($m), 'MISS', 'no-cache with an ETag: MISS (stored)');
    my $r = get($p);
    my @seen = breqs($p);
    is(scalar @seen, 2, '... the next request goes to the backend (revalidation)');
    is($seen[1] && $seen[1]{hdr}{'if-none-match'}, '"v1"', '... with If-None-Match: "v1"');
    is($r && $r->{status}, 200, '... the backend says 304, the client gets 200');
    is(word($r), 'REVALIDATED', '... REVALIDATED');
    is($r && $r->{body}, $m && $m->{body}, '... the stored body');
    is($r && $r->{headers}{'x-updated'}, 'by-304-' . $seen[1]{seq}, "... with the 304's X-Updated");
    is($r && $r->{headers}{'content-length'}, length($m ? $m->{body} : ''), '... and the stored length');
    is($r && $r->{headers}{etag}, '"v1"', '... ETag "v1"');
    my $r2 = get($p);
    @seen = breqs($p);
    is(scalar @seen, 3, '... every use is revalidated (a third backend request)');
    is(word($r2), 'REVALIDATED', '... REVALIDATED again');

    # the client's own conditional: answered from the revalidated entry
    my $n0 = scalar breqs($p);
    my $c = get($p, 'If-None-Match' => '"v1"');
    my ($last) = (breqs($p))[-1];
    is($c && $c->{status}, 304, "a client's If-None-Match: \"v1\": 304");
    is($last && $last->{hdr}{'if-none-match'}, '"v1"', '... the backend saw the cache\'s tag');
    my $c2 = get($p, 'If-None-Match' => '"zzz"');
    ($last) = (breqs($p))[-1];
    is($c2 && $c2->{status}, 200, "If-None-Match: \"zzz\": 200 with the body");
    is($last && $last->{hdr}{'if-none-match'}, '"v1"', '... and the backend still saw "v1", not the client\'s tag');

    set_ctl($p, 'v2');
    my $n = get($p);
    is(word($n), 'MISS', 'the resource changed (200 to the conditional): MISS');
    like($n && $n->{body} // '', qr/^v2 body /, '... the new body');
    my $n2 = get($p);
    ($last) = (breqs($p))[-1];
    is($last && $last->{hdr}{'if-none-match'}, '"v2"', '... which is stored: the next revalidation sends "v2"');
    like($n2 && $n2->{body} // '', qr/^v2 body /, '... and serves it (' . word($n2) . ')');
}

# --- no-cache without a validator ------------------------------------------------
{
    my $a = get('/c/ncnoval/1');
    my $b = get('/c/ncnoval/1');
    is(word($a) . ' ' . word($b), 'BYPASS BYPASS', 'no-cache without a validator: BYPASS, BYPASS');
    my @seen = breqs('/c/ncnoval/1');
    ok(!grep({ exists $_->{hdr}{'if-none-match'} || exists $_->{hdr}{'if-modified-since'} } @seen),
       '... no conditional request');
}

# --- must-revalidate, Last-Modified only ------------------------------------------
{
    my $p = '/c/lm/1';
    my $m = get($p);
    is(word($m), 'MISS', 'max-age=1, must-revalidate, Last-Modified: MISS');
    sleep 1.3;
    my $r = get($p);
    my @seen = breqs($p);
    is(scalar @seen, 2, '... stale after 1.3 s: revalidated, not served stale');
    is($seen[1] && $seen[1]{hdr}{'if-modified-since'}, $LM, '... with If-Modified-Since: the stored Last-Modified');
    ok($seen[1] && !exists $seen[1]{hdr}{'if-none-match'}, '... and no If-None-Match (no ETag stored)');
    is(word($r), 'REVALIDATED', '... REVALIDATED');
    is($r && $r->{body}, $m && $m->{body}, '... the stored body');
    is($r && $r->{headers}{'cache-control'}, 'max-age=60, must-revalidate', "... the 304's Cache-Control");
    my $h2 = get($p);
    is(word($h2), 'HIT', "... then fresh for the 304's max-age=60: HIT");
    is(scalar breqs($p), 2, '... two backend requests in all');
}

# --- a 304 for another representation ---------------------------------------------
{
    my $p = '/c/nc/mismatch';
    my $m = get($p);
    set_ctl("$p-304other", 1);
    my $r = get($p);
    my @seen = breqs($p);
    is(scalar @seen, 3, 'a 304 with another ETag: the cache asks again');
    is($seen[1] && $seen[1]{hdr}{'if-none-match'}, '"v1"', '... first conditionally');
    ok($seen[2] && !exists $seen[2]{hdr}{'if-none-match'}, '... then without conditionals');
    is($r && $r->{status}, 200, '... the client gets 200');
    like($r && $r->{body} // '', qr/seq=$seen[2]{seq}\n/, '... with the body of the full answer');
}

# --- Vary --------------------------------------------------------------------------
{
    my $p = '/c/vary/1';
    get($p, 'X-Lang' => 'en');
    get($p, 'X-Lang' => 'fr');
    my $fr = get($p, 'X-Lang' => 'fr');
    my $en = get($p, 'X-Lang' => 'en');
    my @seen = breqs($p);
    is(scalar @seen, 4, 'no-cache, Vary: X-Lang: two variants, each revalidated');
    is(join(' ', map { ($_->{hdr}{'x-lang'} // '-') . '/' . ($_->{hdr}{'if-none-match'} // '-') } @seen[2, 3]),
       'fr/"fr-1" en/"en-1"', '... the conditional requests carry X-Lang and the variant\'s own tag');
    is(word($fr) . ' ' . word($en), 'REVALIDATED REVALIDATED', '... REVALIDATED');
    like($fr && $fr->{body} // '', qr/^lang=fr /, '... fr gets the fr body');
    like($en && $en->{body} // '', qr/^lang=en /, '... en the en body');
}

# --- coalescing ------------------------------------------------------------------------
{
    my $p = '/c/nc/slow';
    get($p);
    my $n0 = scalar breqs($p);
    my $N = 30;
    my %f0 = %{ figures($HP) };
    my @s = map { connect_to($HP) } 1 .. $N;
    send_raw($_, "GET $p HTTP/1.1\r\nHost: 127.0.0.1:$HP\r\nConnection: close\r\n\r\n") for @s;
    # the backend holds its 304 until the other requests wait for it
    my $parked = wait_for(sub { my %f = %{ figures($HP) }; ($f{CacheCoalesced} // 0) - ($f0{CacheCoalesced} // 0) >= $N - 1 }, 10);
    ok($parked, ($N - 1) . ' requests park on the one revalidation (CacheCoalesced)');
    set_ctl('release', 1);
    my (%w, $bodies);
    for my $s (@s) {
        my $buf = '';
        my $r = read_response($s, \$buf, timeout => 10);
        close $s;
        $w{ word($r) }++;
        $bodies++ if $r && $r->{status} == 200 && $r->{body} =~ /^v1 body seq=/;
    }
    is(scalar(breqs($p)) - $n0, 1, "$N concurrent requests for a no-cache key: ONE conditional request");
    is($bodies, $N, '... all get 200 with the stored body');
    ok(($w{REVALIDATED} // 0) >= 1 && ($w{REVALIDATED} // 0) + ($w{HIT} // 0) == $N,
       '... REVALIDATED for the one that asked, HIT for the ones that waited')
        or diag explain \%w;
}

# --- stale-while-revalidate: the refresh is conditional ---------------------------------
{
    my $p = '/c/swr/1';
    my $m = get($p);
    sleep 1.3;
    my $s = get($p);
    is(word($s), 'STALE', 'max-age=1, stale-while-revalidate=30, an ETag: STALE after 1.3 s');
    my $ok = wait_for(sub { scalar(breqs($p)) >= 2 }, 3);
    my @seen = breqs($p);
    is($seen[1] && $seen[1]{hdr}{'if-none-match'}, '"s1"', '... the background refresh is conditional');
    my $r;
    wait_for(sub { $r = get($p); word($r) eq 'HIT' }, 3);
    is(word($r), 'HIT', '... after the 304 the entry is fresh again: HIT');
    is($r && $r->{body}, $m && $m->{body}, '... with the stored body');
    is($r && $r->{headers}{'x-updated'}, 'by-304-' . ($seen[1] ? $seen[1]{seq} : -1), "... and the 304's X-Updated");
}

ok($h->stop, 'server stops');
is_deeply([$h->error_lines], [], 'no error-log line at level error or above') or diag join "\n", $h->error_lines;
$be->stop;
done_testing;
