#!/usr/bin/perl
# Streamed cache misses (issue 12 §5): a storable miss goes to its client
# and to every request waiting on the same key as the backend sends it,
# and into the store when whole; fills count against AsyncProxyCacheSize.
#
# Server A (AsyncProxyCacheSize 64M, MaxObject 2M):
#   - 1 MiB from a backend that sends 64 KiB per 100 ms and holds its last
#     64 KiB until the test has seen body bytes at all 101 clients (the
#     fetcher and 100 coalesced waiters): streaming shown without timing;
#     one backend fetch; 101 bodies identical to the origin's; the object
#     is stored (a later request is a HIT); a conditional waiter gets its
#     304, a HEAD waiter its head;
#   - a compressible text: identity clients stream, gzip clients wait for
#     the stored gzip copy and get it;
#   - the fetcher's client and one waiter stop reading: 5 other waiters
#     complete while they are stalled; then both get whole bodies.
# Server B (AsyncProxyCacheSize 1M, MaxObject 512K):
#   - a chunked 1 MiB fill (larger than MaxObject, no length to tell in
#     advance) read by 11 clients: all whole, one fetch, nothing stored
#     (the next request goes to the backend);
#   - 24 distinct slow misses at once (300 KiB, half of them chunked):
#     all whole; CacheBytes (stored + reserved by fills), sampled
#     throughout, never above 1M; some stored, some not;
#   - the backend dies mid-body after all 11 readers got bytes: every
#     response is cut (no chunked terminator), nothing stored, one error
#     line (APX00182).
# Server C (AsyncProxyCacheWait 1s): a fill whose bytes keep coming
#   outlives that second: a request arriving later reads it (no second
#   fetch).
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
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);

raise_fd_limit(1024);

my $CTL = tempdir('apx-streamctl-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $MIB = 1 << 20;
my $STEP = 64 * 1024;
my %BODY = (big => noise($MIB, 12345), mid => noise(300 * 1024, 777),
            text => substr(join('', map { "line $_ of a text that compresses well\n" } 1 .. 30000), 0, $MIB));
my %MD5 = map { $_ => md5_hex($BODY{$_}) } keys %BODY;

sub release { my ($name) = @_; open my $fh, '>', "$CTL/release-$name" or die; close $fh }

sub write_all {
    my ($sock, $bytes) = @_;
    while (length $bytes) {
        my $n = syswrite($sock, $bytes);
        return 0 unless defined $n;
        substr($bytes, 0, $n, '');
    }
    return 1;
}

# /KIND/NAME[?...]: KIND is hold (the last 64 KiB wait for the test's
# release file), free (no wait), die (256 KiB, then wait, then close),
# hold512 (512 KiB, wait, the rest). A "c" prefix on NAME's first letter:
# chunked. The body is BODY{big} (or {mid} for NAME m*).
sub backend {
    my ($req, $conn) = @_;
    my ($kind, $name) = $req->{target} =~ m{^/\w+/(\w+)/([\w.-]+)} or return APX::Backend::reply($req, 404, "no\n");
    my $chunked = $name =~ /^c/;
    my $body = $name =~ /^c?m/ ? $BODY{mid} : $name =~ /^t/ ? $BODY{text} : $BODY{big};
    my $type = $name =~ /^t/ ? 'text/plain' : 'application/octet-stream';
    my $sock = $conn->{sock};
    my $head_only = $req->{method} eq 'HEAD';
    my $head = "HTTP/1.1 200 OK\r\nContent-Type: $type\r\n"
             . "Cache-Control: max-age=60\r\nETag: \"e-$name\"\r\n"
             . ($chunked ? "Transfer-Encoding: chunked\r\n" : 'Content-Length: ' . length($body) . "\r\n")
             . "\r\n";
    write_all($sock, $head) or return [[close => 1]];
    return [[keep => 1]] if $head_only;
    my $hold_at = $kind eq 'hold' ? length($body) - $STEP
                : $kind eq 'die' ? 256 * 1024
                : $kind eq 'hold512' ? 512 * 1024 : -1;
    for (my $off = 0; $off < length $body; $off += $STEP) {
        if ($off == $hold_at) {
            my $t = time;
            sleep 0.02 until -e "$CTL/release-$name" || time - $t > 30;
            return [[close => 1]] if $kind eq 'die';
        }
        my $piece = substr($body, $off, $STEP);
        $piece = sprintf("%x\r\n%s\r\n", length $piece, $piece) if $chunked;
        write_all($sock, $piece) or return [[close => 1]];
        sleep 0.1 if $off + $STEP < length $body;
    }
    write_all($sock, "0\r\n\r\n") if $chunked;
    return [[keep => 1]];
}

my $be = APX::Backend->new(handler => \&backend);
my $B = '127.0.0.1:' . $be->port;
sub bcount { my ($t) = @_; return scalar grep { $_->{target} eq $t } $be->requests }

my $PORT;
sub word { my ($r) = @_; return $r ? $r->{headers}{'x-asyncproxy-cache'} // 'no header' : 'no response' }

# the body bytes that arrived on a connection still reading its response
sub body_bytes {
    my ($c) = @_;
    return length($c->{rbuf} // '') - (index($c->{rbuf} // '', "\r\n\r\n") + 4) if index($c->{rbuf} // '', "\r\n\r\n") >= 0;
    return @{ $c->{resps} || [] } ? 1 : 0;
}

# responses the server finished for $path (its access log)
sub logged {
    my ($h, $path) = @_;
    open my $fh, '<', $h->access_log or return 0;
    return scalar grep { /"GET \Q$path\E HTTP/ } <$fh>;
}

sub get_bytes {
    my ($path, @h) = @_;
    return request_bytes($PORT, 'GET', $path, headers => \@h);
}

# ================================================================ server A
my $ha = APX::Httpd->new(
    mpm => 'event', threads => 25, servers => 1, server_limit => 1,
    # a small socket send buffer: a client that does not read holds the
    # server back at once (the kernel does not take the whole body for it)
    global => "AsyncProxyCacheSize 64M\nAsyncProxyCacheMaxObject 2M\nAsyncProxyCacheWait 30s\nSendBufferSize 16384\n",
    conf => "AsyncProxyPass /a/ http://$B/a/ cache=on timeout=10\n",
);
$ha->start;
$PORT = $ha->port;

# --- 101 clients of one streamed fill ----------------------------------------------
{
    my $path = '/a/hold/s1';
    my @c = map { { reqs => [get_bytes($path)] } } 1 .. 101;
    my ($all_first, $released_at_bcount, $cs, $hs);
    multiplex(port => $PORT, conns => \@c, timeout => 60, tick_every => 0.05, tick => sub {
        if (!$cs && bcount($path)) {
            # once the fill is under way: a conditional waiter, a HEAD waiter
            $cs = connect_to($PORT);
            send_raw($cs, get_bytes($path, 'If-None-Match' => '"e-s1"'));
            $hs = connect_to($PORT);
            send_raw($hs, request_bytes($PORT, 'HEAD', $path));
        }
        return if $all_first || !$cs;
        my $n = grep { body_bytes($_) > 0 } @c;
        if ($n == @c) {
            $all_first = 1;
            $released_at_bcount = bcount($path);
            release('s1');
        }
    });
    ok($all_first, 'all 101 clients got body bytes while the backend still held its last 64 KiB');
    my $whole = grep { !$_->{error} && @{ $_->{resps} } == 1 && $_->{resps}[0]{status} == 200
                       && md5_hex($_->{resps}[0]{body}) eq $MD5{big} } @c;
    is($whole, 101, '... then 101 whole bodies, byte-identical to the origin\'s');
    my %w;
    $w{ word($_->{resps}[0]) }++ for grep { @{ $_->{resps} } } @c;
    is_deeply(\%w, { MISS => 1, HIT => 100 }, '... 1 MISS (the fetcher) and 100 HIT (its readers)') or diag explain \%w;
    is(bcount($path), 1, '... exactly one backend fetch');
    is($released_at_bcount, 1, '... (already one when the first bytes were everywhere)');
    my ($cbuf, $hbuf) = ('', '');
    my $cr = $cs && read_response($cs, \$cbuf, timeout => 10);
    my $hr = $hs && read_response($hs, \$hbuf, timeout => 10, head_only => 1);
    is($cr && $cr->{status}, 304, 'a conditional waiter (If-None-Match: the ETag): 304');
    ok($hr && $hr->{status} == 200 && ($hr->{headers}{'content-length'} // '') eq $MIB && $hr->{body} eq '',
       'a HEAD waiter: 200, Content-Length 1048576, no body');
    my $r = http_request($PORT, 'GET', $path);
    ok($r && word($r) eq 'HIT' && md5_hex($r->{body}) eq $MD5{big}, 'a later request: HIT, the same bytes');
    is(bcount($path), 1, '... still one backend fetch');
}

# --- gzip clients wait for the stored gzip copy --------------------------------------
{
    my $path = '/a/hold/t1';
    my $f = connect_to($PORT);
    send_raw($f, get_bytes($path));                 # the fetcher: identity
    ok(wait_for(sub { bcount($path) >= 1 }, 5), 'a compressible text: the fetch began');
    my @id = map { { reqs => [get_bytes($path)] } } 1 .. 5;
    my @gz = map { { reqs => [get_bytes($path, 'Accept-Encoding' => 'gzip')] } } 1 .. 2;
    my ($fbuf, $gz_early) = ('', -1);
    multiplex(port => $PORT, conns => [@id, @gz], timeout => 60, tick_every => 0.05, tick => sub {
        return if $gz_early >= 0;
        sysread($f, $fbuf, 65536, length $fbuf) if can_read($f, 0);
        return unless index($fbuf, "\r\n\r\n") >= 0 && length($fbuf) > index($fbuf, "\r\n\r\n") + 4;
        return unless (grep { body_bytes($_) > 0 } @id) == @id;
        $gz_early = grep { length($_->{rbuf} // '') || @{ $_->{resps} } } @gz;
        release('t1');
    });
    is($gz_early, 0, 'the identity fetcher and 5 identity waiters got bytes, 2 gzip waiters nothing yet');
    my $r = read_response($f, \$fbuf, timeout => 20);
    ok($r && $r->{body} eq $BODY{text} && !$r->{headers}{'content-encoding'}, '... the fetcher: the original bytes');
    like($r && $r->{headers}{vary} // '', qr/Accept-Encoding/i, '... with Vary: Accept-Encoding (a gzip copy will be stored)');
    my $ids = grep { @{ $_->{resps} } && $_->{resps}[0]{body} eq $BODY{text} } @id;
    is($ids, 5, '... the identity waiters: the original bytes');
    my $gzs = grep {
        my $x = $_->{resps}[0];
        my $plain;
        $x && ($x->{headers}{'content-encoding'} // '') eq 'gzip' && gunzip(\$x->{body} => \$plain) && $plain eq $BODY{text}
    } @gz;
    is($gzs, 2, '... the gzip waiters: the stored gzip copy, which gunzips to the original');
    is(bcount($path), 1, '... one backend fetch');
}

# --- stalled readers do not hold back the others -----------------------------------
{
    my $path = '/a/free/s2';
    my $stalled = sub {
        my $s = connect_to($PORT);
        send_raw($s, get_bytes($path));
        return $s;
    };
    my $f = $stalled->();       # the fetcher's own client
    ok(wait_for(sub { bcount($path) >= 1 }, 5), 'stalled clients: the fetch began');
    my $w = $stalled->();       # a waiter
    my @c = map { { reqs => [get_bytes($path)] } } 1 .. 5;
    multiplex(port => $PORT, conns => \@c, timeout => 30);
    my $whole = grep { !$_->{error} && @{ $_->{resps} } == 1
                       && md5_hex($_->{resps}[0]{body}) eq $MD5{big} } @c;
    is($whole, 5, '5 readers got whole bodies while the fetcher\'s client and another reader did not read');
    is(logged($ha, $path), 5, '... (the server had finished those 5 responses, not the 2 stalled ones)');
    for my $s ([$f, 'the fetcher\'s client'], [$w, 'the stalled reader']) {
        my $buf = '';
        my $r = read_response($s->[0], \$buf, timeout => 20);
        ok($r && $r->{complete} && md5_hex($r->{body}) eq $MD5{big}, "... then $s->[1] reads: the whole body")
            or diag $r ? "status $r->{status} complete $r->{complete} body " . length($r->{body}) . ' ' . ($r->{head} // '') : 'no response';
        close $s->[0];
    }
    ok(wait_for(sub { logged($ha, $path) == 7 }, 5), '... and then finished all 7');
    is(bcount($path), 1, '... one backend fetch for all 7');
    my $r = http_request($PORT, 'GET', $path);
    is(word($r), 'HIT', '... stored');
}

ok($ha->stop, 'server A stops');
{
    my @bad = $ha->error_lines;
    is_deeply(\@bad, [], 'server A: no error-log line at level error or above') or diag join "\n", @bad;
}

# ================================================================ server B
my $hb = APX::Httpd->new(
    mpm => 'event', threads => 25, servers => 1, server_limit => 1,
    global => "AsyncProxyCacheSize 1M\nAsyncProxyCacheMaxObject 512K\nAsyncProxyCacheWait 30s\n",
    conf => "AsyncProxyPass /b/ http://$B/b/ cache=on timeout=10\n",
);
$hb->start;
$PORT = $hb->port;

# 11 clients of one fill; released once all have body bytes
sub eleven {
    my ($path, $name) = @_;
    my @c = map { { reqs => [get_bytes($path)] } } 1 .. 11;
    my $all;
    multiplex(port => $PORT, conns => \@c, timeout => 60, tick_every => 0.05, tick => sub {
        return if $all;
        if ((grep { body_bytes($_) > 0 } @c) == @c) {
            $all = 1;
            release($name);
        }
    });
    return ($all, @c);
}

# --- larger than AsyncProxyCacheMaxObject, found out mid-body --------------------------
{
    my $path = '/b/hold512/cbig';
    my ($all, @c) = eleven($path, 'cbig');
    ok($all, 'MaxObject 512K, a chunked 1 MiB: 11 clients got bytes before the backend passed 512 KiB');
    my $whole = grep { !$_->{error} && @{ $_->{resps} } == 1
                       && md5_hex($_->{resps}[0]{body}) eq $MD5{big} } @c;
    is($whole, 11, '... all 11 got the whole body (the fill stopped storing, not reading)');
    is(bcount($path), 1, '... from one backend fetch');
    my $r = http_request($PORT, 'GET', $path);
    ok($r && md5_hex($r->{body}) eq $MD5{big} && word($r) ne 'HIT', '... nothing stored: the next request is '
       . word($r) . ', whole');
    is(bcount($path), 2, '... and went to the backend');
}

# --- many distinct slow misses with a small budget ----------------------------------
{
    my @paths = map { $_ % 2 ? "/b/free/m$_" : "/b/free/cm$_" } 1 .. 24;
    my @c = map { { reqs => [get_bytes($_)] } } @paths;
    my ($max, $samples) = (0, 0);
    multiplex(port => $PORT, conns => \@c, timeout => 60, tick_every => 0.05, tick => sub {
        my $b = figures($PORT)->{CacheBytes};
        return unless defined $b;
        $samples++;
        $max = $b if $b > $max;
    });
    my $whole = grep { !$_->{error} && @{ $_->{resps} } == 1
                       && md5_hex($_->{resps}[0]{body}) eq $MD5{mid} } @c;
    is($whole, 24, 'AsyncProxyCacheSize 1M, 24 distinct 300 KiB misses at once (12 chunked): all whole');
    cmp_ok($samples, '>=', 5, "... CacheBytes sampled $samples times meanwhile");
    cmp_ok($max, '<=', $MIB, "... never above the budget (max $max)");
    cmp_ok($max, '>=', 300 * 1024, '... while fills held bytes');
    # HEAD: a lookup that stores nothing (so evicts nothing) on a miss
    my %w;
    for my $p (@paths) {
        my $r = http_request($PORT, 'HEAD', $p);
        $w{ word($r) eq 'HIT' ? 'HIT' : 'not stored' }++ if $r && $r->{status} == 200;
    }
    ok(($w{HIT} // 0) >= 1 && ($w{'not stored'} // 0) >= 1, 'afterwards some are stored (HIT to a HEAD) and some not')
        or diag explain \%w;
    my $f = figures($PORT);
    cmp_ok($f->{CacheBytes} // 1e9, '<=', $MIB, "... CacheBytes $f->{CacheBytes} at rest");
}

# --- the backend dies mid-body -------------------------------------------------------
{
    my $path = '/b/die/cdead';
    my ($all, @c) = eleven($path, 'cdead');
    ok($all, 'a backend that dies after 256 KiB: 11 clients got bytes first');
    my $cut = grep { ($_->{error} // '') eq 'eof' && !@{ $_->{resps} } } @c;
    is($cut, 11, '... every response cut (connection closed, no chunked terminator)');
    is(bcount($path), 1, '... one backend fetch');
    my $s = connect_to($PORT);
    send_raw($s, get_bytes($path));
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 10);
    is(bcount($path), 2, '... nothing stored: the next request goes to the backend');
    ok(!$r || !$r->{complete}, '... (and is cut the same way)');
    close $s;
}

ok($hb->stop, 'server B stops');
{
    my @err = $hb->error_lines;
    my @ours = grep { /APX00182/ } @err;
    my @bad = grep { !/APX00182/ } @err;
    is(scalar @ours, 2, 'server B: the two backend deaths logged once each (APX00182)') or diag join "\n", @err;
    is_deeply(\@bad, [], '... and no other error line') or diag join "\n", @bad;
}
# ================================================================ server C
# AsyncProxyCacheWait 1s: a fill whose bytes keep coming outlives it, and
# a request arriving after that second still reads it
my $hc = APX::Httpd->new(
    mpm => 'event', threads => 25, servers => 1, server_limit => 1,
    global => "AsyncProxyCacheSize 64M\nAsyncProxyCacheMaxObject 2M\nAsyncProxyCacheWait 1s\n",
    conf => "AsyncProxyPass /c/ http://$B/c/ cache=on timeout=10\n",
);
$hc->start;
$PORT = $hc->port;
{
    my $path = '/c/free/late';
    my $f = connect_to($PORT);
    send_raw($f, get_bytes($path));
    my $fbuf = '';
    # 11 backend writes, 100 ms apart: more than a second after the fetch
    # (and its pending entry) began
    my $past = read_until($f, \$fbuf, sub {
        my $he = index($fbuf, "\r\n\r\n");
        $he >= 0 && length($fbuf) - $he - 4 >= 11 * $STEP }, 20);
    ok($past, 'AsyncProxyCacheWait 1s: the fetcher\'s client has 704 KiB of a fill that sends 64 KiB per 100 ms');
    my $r = http_request($PORT, 'GET', $path);
    ok($r && md5_hex($r->{body}) eq $MD5{big} && word($r) eq 'HIT',
       '... a request arriving now reads the same fill (HIT), whole') or diag word($r);
    is(bcount($path), 1, '... no second fetch: the flowing fill kept its pending entry');
    my $fr = read_response($f, \$fbuf, timeout => 20);
    ok($fr && $fr->{complete} && md5_hex($fr->{body}) eq $MD5{big}, '... the fetcher\'s client: whole');
}
ok($hc->stop, 'server C stops');
is_deeply([$hc->error_lines], [], 'server C: no error-log line at level error or above');

$be->stop;
done_testing();
