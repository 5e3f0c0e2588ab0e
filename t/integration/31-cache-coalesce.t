#!/usr/bin/perl
# The response cache under concurrency (event MPM, one child with 25
# threads, so every request meets the same per-child cache):
#   - miss coalescing: 500 concurrent GETs of one cold key whose backend
#     takes 1 s make exactly ONE backend request; all 500 get 200 with the
#     same body, 1 MISS and 499 HIT, in about the time of that one fetch;
#   - when that one fetch turns out uncacheable (no-store, private) the
#     waiters go to the backend themselves (BYPASS, the backend sees every
#     one); when it fails (the backend answers 502, or times out: 504) the
#     waiters also go themselves and get their own 200s; with a backend
#     that always times out they are not queued behind one failing fetch
#     after another;
#   - waiters whose clients close cost nothing: no backend request, the
#     others still get their HIT, the figures come back to idle, no error;
#     the fetching client closing does not hurt the waiters either;
#   - 400 concurrent requests over 20 cold keys: one backend request per
#     key, every body the one of its key; the same 400 again are all hits;
#   - AsyncProxyCacheWait 300ms: a waiter whose key's fetch takes 1.5 s
#     goes to the backend itself after about 300 ms;
#   - AsyncProxyCacheSize 1M: 50 keys of 100 KB evict the old ones (the
#     first key is a MISS again, the last a HIT), CacheBytes stays within
#     the budget, CacheEvictions counts; then 100 keep-alive connections
#     churning over 30 such keys concurrently get every body right.
# No error-log line at level error or above, except the backend timeout
# this test provokes (and checks).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(connect_to send_raw read_response request_bytes http_request figures wait_for md5_hex noise
                   multiplex raise_fd_limit);
use File::Temp qw(tempdir);
use Fcntl qw(O_CREAT O_EXCL O_WRONLY);
use Time::HiRes qw(sleep time);

my $N = 500;
# 500 client sockets (and the backend's connections) in this process tree
my $fdlimit = raise_fd_limit(4096);
plan skip_all => "fd limit $fdlimit is too low for $N client sockets" if $fdlimit < $N + 300;

my $t_start = time;

# ---------------------------------------------------------------- backend
my $CTL = tempdir('apx-coalctl-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# true for the first caller with this name across all backend processes
sub first_time {
    my ($name) = @_;
    sysopen(my $fh, "$CTL/first-$name", O_CREAT | O_EXCL | O_WRONLY) or return 0;
    close $fh;
    return 1;
}


# 100 KB bodies that gzip cannot shrink, one per key; computed before the
# backend forks
my $BLOBS = 50;
my %BLOB = map { $_ => "blob $_\n" . noise(100_000 - length("blob $_\n"), $_ * 7919 + 1) } 1 .. $BLOBS;
my %BLOB_MD5 = map { $_ => md5_hex($BLOB{$_}) } keys %BLOB;
my $PAD = join '', map { chr(65 + $_ % 26) } 0 .. 2047;

sub reply { APX::Backend::reply(@_) }

sub backend {
    my ($req) = @_;
    my ($kind, $name) = $req->{target} =~ m{^/n?c/(\w+)/([\w.-]+)} or return reply($req, 404, "no\n");
    my $tag = "$kind $name seq=$req->{seq}\n";
    my @ma60 = ('Cache-Control' => 'max-age=60', 'Content-Type' => 'text/plain');
    return [[sleep => 1], [send => reply($req, 200, $tag . $PAD, @ma60)]] if $kind eq 'co';
    return [[sleep => 1], [send => reply($req, 200, $tag, 'Cache-Control' => 'no-store')]] if $kind eq 'nostore';
    return [[sleep => 1], [send => reply($req, 200, $tag, 'Cache-Control' => 'private, max-age=60')]]
        if $kind eq 'private';
    if ($kind eq 'fail') {
        return [[sleep => 0.5], [send => reply($req, 502, "backend failed\n")]] if first_time("fail-$name");
        return reply($req, 200, $tag, @ma60);
    }
    if ($kind eq 'slow') {
        # the first answer comes after the proxy's timeout=1
        return [[sleep => 2.5], [send => reply($req, 200, $tag, @ma60)]] if first_time("slow-$name");
        return reply($req, 200, $tag, @ma60);
    }
    # every answer comes after the proxy's timeout=1
    return [[sleep => 2.5], [send => reply($req, 200, $tag, @ma60)]] if $kind eq 'slowall';
    return [[sleep => 1.5], [send => reply($req, 200, $tag, @ma60)]] if $kind eq 'quit' || $kind eq 'wait';
    return [[sleep => 0.5], [send => reply($req, 200, $tag, @ma60)]] if $kind eq 'many';
    return reply($req, 200, $tag) if $kind eq 'plain';
    if ($kind eq 'blob') {
        return reply($req, 200, $BLOB{$name} // "no blob $name\n", 'Cache-Control' => 'max-age=60',
                     'Content-Type' => 'application/octet-stream');
    }
    return reply($req, 404, "unknown kind $kind\n");
}

my $be = APX::Backend->new(handler => \&backend);
my $B = '127.0.0.1:' . $be->port;

sub bcount { my ($target) = @_; return scalar grep { $_->{target} eq $target } $be->requests }

# ---------------------------------------------------------------- clients
my $PORT;

sub raw_get {
    my ($path, %o) = @_;
    return request_bytes($PORT, 'GET', $path, keep_alive => $o{keep});
}

# $n concurrent connections, one GET of $path each; returns (conns, seconds)
sub burst {
    my ($path, $n, %o) = @_;
    my @c = map { { reqs => [raw_get($path)] } } 1 .. $n;
    my $t0 = time;
    multiplex(port => $PORT, conns => \@c, timeout => $o{timeout} // 30,
              ($o{tick} ? (tick => $o{tick}, tick_every => $o{tick_every} // 0.1) : ()));
    return (\@c, time - $t0);
}

# (statuses, words, bodies): "value => count" hashes over every response;
# a connection that failed counts as status "error: why"
sub tally {
    my ($conns) = @_;
    my (%st, %w, %b);
    for my $c (@$conns) {
        $st{"error: $c->{error}"}++ if $c->{error};
        for my $r (@{ $c->{resps} }) {
            $st{ $r->{status} }++;
            $w{ $r->{headers}{'x-asyncproxy-cache'} // 'no header' }++;
            $b{ $r->{body} }++;
        }
    }
    return (\%st, \%w, \%b);
}

sub word { my ($r) = @_; return $r ? $r->{headers}{'x-asyncproxy-cache'} // 'no header' : 'no response' }

sub fig_delta {
    my ($f0, $f1, $name) = @_;
    return ($f1->{$name} // 0) - ($f0->{$name} // 0);
}

# the module is idle again: nothing in flight, parked or holding a stack
sub settled {
    my %f;
    my $ok = wait_for(sub {
        %f = %{ figures($PORT) };
        ($f{InFlight} // -1) == 0 && ($f{ParkedRequests} // -1) == 0 && ($f{StacksInUse} // -1) == 0;
    }, 10);
    return ($ok, \%f);
}

# =================================================== server A: coalescing
my $h = APX::Httpd->new(
    mpm => 'event', threads => 25, factor => 400, servers => 1, server_limit => 1,
    global => "AsyncProxyCacheSize 16M\nListenBacklog 4096\n",
    conf => "AsyncProxyPass /c/ http://$B/c/ cache=on\n"
          . "AsyncProxyPass /t/ http://$B/c/ cache=on timeout=1\n"
          . "AsyncProxyPass /nc/ http://$B/nc/\n",
);
$h->start;
$PORT = $h->port;
my @kids = $h->children;
is(scalar @kids, 1, 'one child: one cache');

# --- 500 concurrent GETs of one cold key ---------------------------------------
{
    my %f0 = %{ figures($PORT) };
    my ($c, $took) = burst('/c/co/1', $N);
    my ($st, $w, $b) = tally($c);
    is_deeply($st, { 200 => $N }, "$N concurrent GETs of one cold key (backend takes 1 s): $N x 200")
        or diag explain $st;
    is(scalar keys %$b, 1, '... all with the same body');
    my ($body) = keys %$b;
    like($body // '', qr/^co 1 seq=\d+\n/, '... the backend\'s body');
    is_deeply($w, { MISS => 1, HIT => $N - 1 }, '... 1 MISS and ' . ($N - 1) . ' HIT') or diag explain $w;
    is(bcount('/c/co/1'), 1, '... exactly one backend request');
    cmp_ok($took, '<', 3, sprintf('... all answered in %.1f s (one fetch of 1 s, not one each)', $took));
    my %f1 = %{ figures($PORT) };
    is(fig_delta(\%f0, \%f1, 'CacheMisses'), 1, 'CacheMisses +1');
    is(fig_delta(\%f0, \%f1, 'CacheHits'), $N - 1, 'CacheHits +' . ($N - 1));
    my $co = fig_delta(\%f0, \%f1, 'CacheCoalesced');
    cmp_ok($co, '>=', $N / 2, "CacheCoalesced counts the requests that waited for the fetch (+$co)");
    cmp_ok($co, '<=', $N - 1, '... at most the ' . ($N - 1) . ' that did not fetch');
    my $r = http_request($PORT, 'GET', '/c/co/1');
    is(word($r), 'HIT', 'a later request: HIT');
}

# --- the one fetch is uncacheable: the waiters go to the backend themselves -----
for my $kind (qw(nostore private)) {
    my $n = 50;
    my ($c, $took) = burst("/c/$kind/1", $n);
    my ($st, $w) = tally($c);
    my $what = $kind eq 'nostore' ? 'no-store' : 'private';
    is_deeply($st, { 200 => $n }, "$n concurrent GETs, the response is Cache-Control: $what: $n x 200")
        or diag explain $st;
    is_deeply($w, { BYPASS => $n }, "... all BYPASS") or diag explain $w;
    is(bcount("/c/$kind/1"), $n, "... the backend saw every one of them");
    cmp_ok($took, '<', 6, sprintf('... in %.1f s (not one after the other)', $took));
}

# --- the one fetch fails: the waiters go to the backend themselves ---------------
{
    my $n = 50;
    my ($c, $took) = burst('/c/fail/1', $n);
    my ($st) = tally($c);
    is_deeply($st, { 502 => 1, 200 => $n - 1 },
              "$n concurrent GETs, the first backend answer is a 502: the fetching client gets it, "
              . ($n - 1) . ' others 200') or diag explain $st;
    is(bcount('/c/fail/1'), $n, '... the waiters went to the backend themselves');
    cmp_ok($took, '<', 5, sprintf('... in %.1f s', $took));
    my $r = http_request($PORT, 'GET', '/c/fail/1');
    is(word($r), 'HIT', '... and what they fetched was stored: a later request HITs');
}
{
    my $n = 30;
    my ($c, $took) = burst('/t/slow/1', $n);
    my ($st) = tally($c);
    is_deeply($st, { 504 => 1, 200 => $n - 1 },
              "$n concurrent GETs, the first backend request times out (timeout=1): one 504, "
              . ($n - 1) . ' x 200') or diag explain $st;
    is(bcount('/c/slow/1'), $n, '... the waiters went to the backend themselves');
    cmp_ok($took, '<', 4, sprintf('... in %.1f s (they waited for the failed fetch only, not AsyncProxyCacheWait)',
                                  $took));
}
{
    # a backend that always times out: the waiters are not queued behind
    # one failing fetch after another
    my $n = 10;
    my $t0 = time;
    my ($c, $took) = burst('/t/slowall/1', $n);
    my ($st) = tally($c);
    is_deeply($st, { 504 => $n }, "$n concurrent GETs, every backend request times out (timeout=1): $n x 504")
        or diag explain $st;
    is(bcount('/c/slowall/1'), $n, '... each went to the backend');
    my @t = sort { $a <=> $b } map { $_->{t_done} - $t0 } grep { $_->{t_done} } @$c;
    cmp_ok($took, '<', 3, sprintf('... all within %.1f s: one failed fetch, then each its own (%s)', $took,
                                  join(' ', map { sprintf '%.1f', $_ } @t)));
}

# --- waiters whose clients close ---------------------------------------------------
{
    my %f0 = %{ figures($PORT) };
    my $f = connect_to($PORT);
    send_raw($f, raw_get('/c/quit/1'));
    ok(wait_for(sub { bcount('/c/quit/1') >= 1 }, 5), 'a fetch of 1.5 s is under way');
    my @quitters = map { my $s = connect_to($PORT); send_raw($s, raw_get('/c/quit/1')); $s } 1 .. 50;
    sleep 0.3;
    close $_ for @quitters;
    my ($c) = burst('/c/quit/1', 50);
    my $buf = '';
    my $fr = read_response($f, \$buf, timeout => 10);
    close $f;
    is($fr && $fr->{status}, 200, '50 waiters closed their connections: the fetching client still gets 200');
    is(word($fr), 'MISS', '... MISS');
    my ($st, $w, $b) = tally($c);
    is_deeply($st, { 200 => 50 }, '... 50 later waiters get 200') or diag explain $st;
    is_deeply($w, { HIT => 50 }, '... HIT') or diag explain $w;
    is_deeply([keys %$b], [$fr ? $fr->{body} : ''], '... with the fetched body');
    is(bcount('/c/quit/1'), 1, '... and the ones that left cost no backend request');
    my ($ok, $f1) = settled();
    ok($ok, 'the module is idle again (InFlight, ParkedRequests, StacksInUse 0)') or diag explain $f1;
    my $r = http_request($PORT, 'GET', '/c/quit/1');
    is(word($r), 'HIT', '... and a later request is a HIT');
}
{
    # the fetching client itself leaves; the waiters still get a good answer
    my $f = connect_to($PORT);
    send_raw($f, raw_get('/c/quit/2'));
    ok(wait_for(sub { bcount('/c/quit/2') >= 1 }, 5), 'another fetch of 1.5 s is under way');
    my $t0 = time;
    my $closed = 0;
    my ($c, $took) = burst('/c/quit/2', 20, timeout => 15, tick_every => 0.1, tick => sub {
        if (!$closed && time - $t0 > 0.3) { close $f; $closed = 1 }
    });
    ok($closed, '... its client closed while 20 others waited');
    my ($st, $w, $b) = tally($c);
    is_deeply($st, { 200 => 20 }, '... the 20 waiters get 200') or diag explain $st;
    my @bad = grep { !/^quit 2 seq=\d+\n\z/ } keys %$b;
    is_deeply(\@bad, [], '... with the backend\'s body');
    cmp_ok($took, '<', 8, sprintf('... in %.1f s', $took));
    my ($ok, $f1) = settled();
    ok($ok, 'the module is idle again') or diag explain $f1;
}

# --- 400 concurrent requests over 20 cold keys ----------------------------------------
{
    my $K = 20;
    my @c;
    for my $i (1 .. 20) {
        push @c, { key => $_, reqs => [raw_get("/c/many/k$_")] } for 1 .. $K;
    }
    for my $round (1, 2) {
        my $t0 = time;
        multiplex(port => $PORT, conns => \@c, timeout => 30);
        my $took = time - $t0;
        my ($st, $w) = tally(\@c);
        is_deeply($st, { 200 => scalar @c }, "round $round: " . scalar(@c) . " concurrent GETs over $K keys: all 200")
            or diag explain $st;
        my %bodies;
        my $wrong = 0;
        for my $x (@c) {
            my $r = $x->{resps}[0] or next;
            $wrong++ unless $r->{body} =~ /^many k$x->{key} seq=\d+\n\z/;
            $bodies{ $x->{key} }{ $r->{body} }++;
        }
        is($wrong, 0, "round $round: every body is the one of its key");
        is(scalar(grep { keys %{ $bodies{$_} } != 1 } keys %bodies), 0, "round $round: one body per key");
        is_deeply($w, $round == 1 ? { MISS => $K, HIT => @c - $K } : { HIT => scalar @c },
                  $round == 1 ? "round 1: $K MISS, " . (@c - $K) . ' HIT' : 'round 2: all HIT')
            or diag explain $w;
        my $sent = grep { $_->{target} =~ m{^/c/many/} } $be->requests;
        is($sent, $K, "round $round: $K backend requests in all, one per key");
        cmp_ok($took, '<', 5, sprintf('round %d took %.1f s', $round, $took));
    }
}

# --- keep-alive after hits: more connections than MPM threads ----------------------
{
    # Each connection: a HIT (served on the MPM thread, so the MPM keeps the
    # connection), then a request to a mapping without the cache. When all
    # its threads are busy the event MPM itself closes idle keep-alive
    # connections ("All workers are busy or dying, will shutdown N
    # keep-alive connections", event.c) - httpd's behaviour for any
    # handler; HTTP clients retry an idempotent request on a new connection
    # then (RFC 9112 section 9.3.1). So: the first answer must always come,
    # and a second request that found its connection closed before any byte
    # of its answer is retried once on a new connection and must succeed.
    my ($lost, $total, $bad, $retried) = (0, 0, 0, 0);
    for my $round (1 .. 3) {
        my @c = map { { n => $_, reqs => [raw_get('/c/co/1', keep => 1), raw_get("/nc/plain/$_")] } } 1 .. 100;
        multiplex(port => $PORT, conns => \@c, timeout => 20);
        for my $x (@c) {
            $total++;
            my @r = @{ $x->{resps} };
            if (@r == 1 && $r[0]{status} == 200) {
                $retried++;
                my $again = http_request($PORT, 'GET', "/nc/plain/$x->{n}");
                push @r, $again if $again && $again->{status};
            }
            $lost++ if @r != 2;
            $bad++ if grep { $_->{status} != 200 } @r;
        }
    }
    is($lost, 0, "$total keep-alive connections (100 at a time), each a HIT then an uncached request: "
       . "every one gets both answers ($retried second requests retried after a keep-alive close)");
    is($bad, 0, '... all 200');
}

ok($h->stop, 'server A stops');
{
    # The provoked backend timeout of /t/slow/1 (checked above) is expected;
    # so is the MPM's own AH00484 ("server reached MaxRequestWorkers"): one
    # child of 25 threads takes bursts of 500 new connections, and every
    # one of them runs its first request on an MPM thread.
    my @err = $h->error_lines;
    my @bad = grep { !m{timed out.* for \S*/c/slow(?:all)?/1\b} && !/AH00484:/ } @err;
    is_deeply(\@bad, [], 'server A: no error-log line at level error or above but the provoked timeout (and AH00484)')
        or diag join "\n", @bad;
}

# =================================================== server B: wait limit, budget
my $hb = APX::Httpd->new(
    mpm => 'event', threads => 25, factor => 400, servers => 1, server_limit => 1,
    global => "AsyncProxyCacheSize 1M\nAsyncProxyCacheWait 300ms\nListenBacklog 4096\n",
    conf => "AsyncProxyPass /c/ http://$B/c/ cache=on\n",
);
$hb->start;
$PORT = $hb->port;

# --- AsyncProxyCacheWait 300ms -----------------------------------------------------
{
    my $f = connect_to($PORT);
    send_raw($f, raw_get('/c/wait/1'));
    ok(wait_for(sub { bcount('/c/wait/1') >= 1 }, 5), 'AsyncProxyCacheWait 300ms: a fetch of 1.5 s is under way');
    my $t_w = time;
    my ($c, $took) = burst('/c/wait/1', 10, timeout => 10);
    my ($st) = tally($c);
    is_deeply($st, { 200 => 10 }, '... 10 waiters get 200') or diag explain $st;
    my @w = grep { $_->{target} eq '/c/wait/1' } $be->requests;
    is(scalar @w, 11, '... each went to the backend itself');
    my @late = map { $_->{time} - $t_w } @w[1 .. $#w];
    my @off = grep { $_ < 0.2 || $_ > 1.2 } @late;
    is(scalar @off, 0, '... after about 300 ms of waiting, not after the 1.5 s fetch ('
       . join(' ', map { sprintf '%.2f', $_ } @late) . ')');
    my $buf = '';
    my $fr = read_response($f, \$buf, timeout => 10);
    is($fr && $fr->{status}, 200, '... and the first fetch completes: 200');
    close $f;
}

# --- AsyncProxyCacheSize 1M: 50 keys of 100 KB --------------------------------------
{
    my %f0 = %{ figures($PORT) };
    my ($bad, $miss) = (0, 0);
    for my $k (1 .. $BLOBS) {
        my $r = http_request($PORT, 'GET', "/c/blob/$k");
        $bad++ unless $r && $r->{status} == 200 && md5_hex($r->{body}) eq $BLOB_MD5{$k};
        $miss++ if word($r) eq 'MISS';
    }
    is($bad, 0, "$BLOBS keys of 100 KB with AsyncProxyCacheSize 1M: every body right");
    is($miss, $BLOBS, '... each a MISS');
    my %f1 = %{ figures($PORT) };
    cmp_ok($f1{CacheBytes} // 1e9, '<=', 1048576, "CacheBytes $f1{CacheBytes} <= 1048576");
    cmp_ok($f1{CacheEntries} // 1e9, '<=', 11, "CacheEntries $f1{CacheEntries}: at most ten 100 KB bodies (and the small wait entry) fit");
    my $ev = fig_delta(\%f0, \%f1, 'CacheEvictions');
    cmp_ok($ev, '>=', $BLOBS - 10, "CacheEvictions +$ev");
    my $last = http_request($PORT, 'GET', "/c/blob/$BLOBS");
    is(word($last), 'HIT', "the last key is still there (HIT)");
    my $first = http_request($PORT, 'GET', '/c/blob/1');
    is(word($first), 'MISS', 'the first key was evicted (MISS again)');
    ok($first && md5_hex($first->{body}) eq $BLOB_MD5{1}, '... its body right');
    is(bcount('/c/blob/1'), 2, '... a second backend request for it');
}

# --- 100 keep-alive connections churning over 30 keys of 100 KB ------------------------
{
    my $K = 30;
    my $R = 5;
    my @c;
    for my $i (0 .. 99) {
        my @keys = map { 1 + ($i * 7 + $_ * 13) % $K } 0 .. $R - 1;
        push @c, { keys => \@keys,
                   reqs => [map { raw_get("/c/blob/$keys[$_]", keep => $_ < $R - 1) } 0 .. $R - 1] };
    }
    my $t0 = time;
    multiplex(port => $PORT, conns => \@c, timeout => 40);
    my $took = time - $t0;
    # A keep-alive connection the event MPM closed while all its threads
    # were busy (see above): the client retries what was not answered on a
    # new connection, each request once.
    my $retried = 0;
    for my $x (@c) {
        next unless $x->{error} && @{ $x->{resps} } && @{ $x->{resps} } < $R;
        for my $j (scalar @{ $x->{resps} } .. $R - 1) {
            my $r = http_request($PORT, 'GET', "/c/blob/$x->{keys}[$j]");
            last unless $r && $r->{status};
            push @{ $x->{resps} }, $r;
            $retried++;
        }
        delete $x->{error} if @{ $x->{resps} } == $R;
    }
    my $done = grep { !$_->{error} && @{ $_->{resps} } == $R } @c;
    note "churn: $retried requests retried after a keep-alive close";
    is($done, scalar @c, "100 connections x $R requests over $K keys of 100 KB (3 MB > 1M budget): all answered")
        or diag explain { map { ("conn $_" => { error => $c[$_]{error}, answered => scalar @{ $c[$_]{resps} },
                                                 keys => "@{ $c[$_]{keys} }" }) }
                          grep { $c[$_]{error} || @{ $c[$_]{resps} } != $R } 0 .. $#c };
    my ($wrong, $n) = (0, 0);
    my %w;
    for my $x (@c) {
        for my $j (0 .. $#{ $x->{resps} }) {
            my $r = $x->{resps}[$j];
            $n++;
            $w{ $r->{headers}{'x-asyncproxy-cache'} // 'no header' }++;
            $wrong++ unless $r->{status} == 200 && md5_hex($r->{body}) eq $BLOB_MD5{ $x->{keys}[$j] };
        }
    }
    is($n, 100 * $R, '... ' . 100 * $R . ' responses');
    is($wrong, 0, '... every one 200 with the body of its key');
    note sprintf('churn: %.1f s, words %s', $took, join ' ', map { "$_=$w{$_}" } sort keys %w);
    my ($ok, $f) = settled();
    ok($ok, 'the module is idle again') or diag explain $f;
    cmp_ok($f->{CacheBytes} // 1e9, '<=', 1048576, "CacheBytes $f->{CacheBytes} still <= 1048576");
    my $r = http_request($PORT, 'GET', '/c/blob/3');
    ok($r && $r->{status} == 200 && md5_hex($r->{body}) eq $BLOB_MD5{3}, 'the server still answers right');
}

ok($hb->stop, 'server B stops');
is_deeply([$hb->error_lines], [], 'server B: no error-log line at level error or above')
    or diag join "\n", $hb->error_lines;
$be->stop;
cmp_ok(time - $t_start, '<', 300, sprintf('the file ends in bounded time (%.0f s; a hang would not)', time - $t_start));
done_testing;
