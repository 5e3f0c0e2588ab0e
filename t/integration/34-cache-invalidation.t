#!/usr/bin/perl
# Invalidation (RFC 9111 section 4.4), per child (event MPM, one child):
#   - a 2xx/3xx answer to POST, PUT, DELETE, PATCH or an unknown method
#     through a cached mapping removes what is stored for the target URI:
#     the next GET is a MISS with a new body; every Vary variant goes;
#   - ... and for a Location / Content-Location of the same origin: the
#     backend's own URL, a path of this server, a relative reference, this
#     server's absolute URL; never another host's;
#   - a 4xx/5xx answer, a safe method (OPTIONS), or a different URI leave
#     the entries alone;
#   - a GET fetch already in flight when the invalidating answer comes is
#     served to its client but not stored;
#   - the unsafe request itself reaches the backend with its body;
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
use File::Temp qw(tempdir);
use Fcntl qw(O_CREAT O_EXCL O_WRONLY);
use Time::HiRes qw(sleep time);

my $CTL = tempdir('apx-invctl-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# true for the first caller with this name across all backend processes
sub ctl_file { my ($name) = @_; $name =~ s{\W}{_}g; return "$CTL/first-$name" }

sub first_time {
    my ($name) = @_;
    sysopen(my $fh, ctl_file($name), O_CREAT | O_EXCL | O_WRONLY) or return 0;
    close $fh;
    return 1;
}

sub backend {
    my ($req) = @_;
    my $t = $req->{target};
    my $m = $req->{method};
    my $seq = $req->{seq};
    my @txt = ('Content-Type' => 'text/plain');
    if ($m eq 'GET' || $m eq 'HEAD') {
        my $body = "$t seq=$seq\n";
        if ($t =~ m{/vary/}) {
            return APX::Backend::response(200, 'lang=' . ($req->{hdr}{'x-lang'} // 'none') . " $body",
                                          @txt, 'Cache-Control' => 'max-age=60', 'Vary' => 'X-Lang');
        }
        my $r = APX::Backend::response(200, $body, @txt, 'Cache-Control' => 'max-age=60');
        if ($t =~ m{/slow/} && first_time($t)) {
            # the first GET is held until the test has sent its PUT
            my $until = time + 10;
            sleep 0.02 until -e ctl_file('release') || time > $until;
        }
        return $r;
        return $r;
    }
    if ($m eq 'OPTIONS') {
        return APX::Backend::response(200, '', 'Allow' => 'GET, POST, OPTIONS');
    }
    # unsafe methods
    my $host = $req->{hdr}{host};    # the backend's own host:port (no PreserveHost)
    return APX::Backend::response(404, "no\n", @txt) if $t =~ m{/fail404/};
    return APX::Backend::response(500, "broken\n", @txt) if $t =~ m{/fail500/};
    my @loc;
    @loc = ('Location' => "http://$host/c/item/loc-backend") if $t =~ m{/list/backend-url};
    @loc = ('Content-Location' => '/c/item/cl-path') if $t =~ m{/list/path};
    @loc = ('Location' => 'item/rel') if $t =~ m{/list/relative};
    @loc = ('Location' => $req->{hdr}{'x-client-url'}) if $t =~ m{/list/client-url};
    @loc = ('Location' => 'http://other.example/c/item/other') if $t =~ m{/list/other-host};
    return APX::Backend::response($t =~ m{/list/} ? 201 : 200, "$m done, body=" . ($req->{body} // '') . "\n",
                                  @txt, @loc);
}

my $be = APX::Backend->new(handler => \&backend);
my $B = '127.0.0.1:' . $be->port;
my $h = APX::Httpd->new(mpm => 'event', threads => 25, servers => 1, server_limit => 1,
                        conf => "AsyncProxyPass /c/ http://$B/c/ cache=on\n"
                              . "AsyncProxyPass /nc/ http://$B/c/\n",
                        global => "AsyncProxyCacheSize 8M\n");
$h->start;
my $HP = $h->port;

sub bcount { my ($target, $method) = @_;
             return scalar grep { $_->{target} eq $target && $_->{method} eq ($method // 'GET') } $be->requests }
sub word   { my ($r) = @_; return $r ? $r->{headers}{'x-asyncproxy-cache'} // 'no header' : 'no response' }
sub seq_of { my ($r) = @_; return $r && $r->{body} =~ /seq=(\d+)/ ? $1 : -1 }
sub get    { my ($path, @h) = @_; return http_request($HP, 'GET', $path, headers => \@h) }
sub call   { my ($method, $path, %o) = @_; return http_request($HP, $method, $path, %o) }

# primes path: MISS then HIT; returns the stored body's seq
sub prime {
    my ($path, @h) = @_;
    my $a = get($path, @h);
    my $b = get($path, @h);
    return (word($a) . ' ' . word($b), seq_of($b));
}

# --- each unsafe method invalidates the target ------------------------------
for my $m (qw(POST PUT DELETE PATCH FROB)) {
    my $path = "/c/item/m-$m";
    my ($w, $seq) = prime($path);
    is($w, 'MISS HIT', "$m: the entry is stored first (MISS, HIT)");
    my $u = call($m, $path, body => "payload-$m");
    is($u && $u->{status}, 200, "... $m $path: 200");
    is(word($u), 'BYPASS', '... BYPASS');
    my ($seen) = grep { $_->{method} eq $m && $_->{target} eq $path } $be->requests;
    is($seen && $seen->{body}, "payload-$m", "... the backend got the $m with its body");
    my $g = get($path);
    is(word($g), 'MISS', "... the next GET: MISS");
    isnt(seq_of($g), $seq, '... with a new body');
    is(bcount($path), 2, '... two GETs reached the backend');
    is(word(get($path)), 'HIT', '... and the new copy is stored again (HIT)');
}

# --- error answers and safe methods leave entries alone ----------------------
for my $c (['/c/fail404/x', 404], ['/c/fail500/x', 500]) {
    my ($path, $status) = @$c;
    my ($w) = prime($path);
    my $u = call('POST', $path, body => 'x');
    is($u && $u->{status}, $status, "POST answered $status");
    is(word(get($path)), 'HIT', '... the stored GET answer stays (HIT)');
    is(bcount($path), 1, '... one GET reached the backend');
}
{
    my $path = '/c/item/options';
    prime($path);
    my $o = call('OPTIONS', $path);
    is($o && $o->{status}, 200, 'OPTIONS: 200');
    is(word(get($path)), 'HIT', '... a safe method invalidates nothing (HIT)');
    prime('/c/item/neighbour');
    call('POST', '/c/item/other-uri', body => 'x');
    is(word(get('/c/item/neighbour')), 'HIT', 'a POST to another URI leaves this one alone (HIT)');
    prime('/c/item/query?a=1');
    call('POST', '/c/item/query?a=2', body => 'x');
    is(word(get('/c/item/query?a=1')), 'HIT', '... also one that differs in the query only');
    call('POST', '/c/item/query?a=1', body => 'x');
    is(word(get('/c/item/query?a=1')), 'MISS', '... while the same query invalidates it (MISS)');
    prime('/c/item/nocache-map');
    my $n = call('POST', '/nc/item/nocache-map', body => 'x');
    ok($n && $n->{status} == 200 && !exists $n->{headers}{'x-asyncproxy-cache'},
       'a POST through a mapping without the cache: proxied, no label');
    is(word(get('/c/item/nocache-map')), 'HIT', '... and invalidates nothing of another scope (HIT)');
}

# --- every Vary variant -------------------------------------------------------
{
    my $path = '/c/vary/1';
    my ($we) = prime($path, 'X-Lang' => 'en');
    my ($wf) = prime($path, 'X-Lang' => 'fr');
    my ($wn) = prime($path);
    is("$we / $wf / $wn", 'MISS HIT / MISS HIT / MISS HIT', 'Vary: X-Lang: three variants stored (en, fr, none)');
    call('DELETE', $path);
    my $e = get($path, 'X-Lang' => 'en');
    my $f = get($path, 'X-Lang' => 'fr');
    my $x = get($path);
    is(word($e) . ' ' . word($f) . ' ' . word($x), 'MISS MISS MISS', '... after a DELETE each variant is a MISS');
    like($e && $e->{body} // '', qr/^lang=en /, '... en gets the en body');
    like($f && $f->{body} // '', qr/^lang=fr /, '... fr the fr body');
    is(word(get($path, 'X-Lang' => 'fr')), 'HIT', '... then HITs again');
    is(bcount($path), 6, '... six GETs reached the backend');
}

# --- Location / Content-Location ---------------------------------------------
{
    my @cases = (
        ['/c/list/backend-url', '/c/item/loc-backend', "Location: the backend's own URL of the item", 'MISS'],
        ['/c/list/path', '/c/item/cl-path', 'Content-Location: a path of this server', 'MISS'],
        ['/c/list/relative', '/c/list/item/rel', 'Location: item/rel, relative to /c/list/relative', 'MISS'],
        ['/c/list/client-url', '/c/item/client-url', "Location: this server's absolute URL", 'MISS'],
        ['/c/list/other-host', '/c/item/other', 'Location: another host (http://other.example/...)', 'HIT'],
    );
    for my $c (@cases) {
        my ($post, $item, $what, $want) = @$c;
        my ($w, $seq) = prime($item);
        my $u = call('POST', $post, body => 'new',
                     headers => ['X-Client-URL' => "http://127.0.0.1:$HP/c/item/client-url"]);
        is($u && $u->{status}, 201, "POST $post: 201 ($what)");
        my $g = get($item);
        is(word($g), $want, "... $item afterwards: $want");
        if ($want eq 'MISS') {
            isnt(seq_of($g), $seq, '... with a new body');
        }
        else {
            is(seq_of($g), $seq, '... the stored body');
        }
    }
}

# --- a fetch in flight is not stored -------------------------------------------
{
    my $path = '/c/slow/1';
    my $n0 = () = $be->requests;
    my $s = connect_to($HP);
    send_raw($s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$HP\r\nConnection: close\r\n\r\n");
    # the GET is at the backend, whose handler left its mark and holds
    # the answer until the PUT went through
    ok(wait_for(sub { -e ctl_file($path) }, 5), 'a GET is in flight (the backend holds its answer)');
    my $u = call('PUT', $path, body => 'changed');
    is($u && $u->{status}, 200, '... a PUT to it meanwhile: 200');
    open my $rel, '>', ctl_file('release') or die;
    close $rel;
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 10);
    close $s;
    is($r && $r->{status}, 200, '... the GET still gets its answer');
    is(word($r), 'MISS', '... MISS');
    my $g = get($path);
    is(word($g), 'MISS', '... but it was not stored: the next GET is a MISS');
    isnt(seq_of($g), seq_of($r), '... with a newer body');
    is(word(get($path)), 'HIT', '... which is stored (HIT)');
    is(bcount($path), 2, '... two GETs reached the backend');
}

ok($h->stop, 'server stops');
is_deeply([$h->error_lines], [], 'no error-log line at level error or above') or diag join "\n", $h->error_lines;
$be->stop;
done_testing;
