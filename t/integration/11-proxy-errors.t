#!/usr/bin/perl
# Strict with backends, clear with failures — under the event MPM (requests
# parked at once: AsyncProxyParkDelay 0) and the worker MPM (synchronous
# driver):
#   - malformed backend responses (status line, header line without colon,
#     bad characters, a head over 16 KiB, an invalid chunk size, CL + TE,
#     conflicting Content-Lengths) are each a 502, with an error-log line
#     naming the backend (127.0.0.1:PORT) and the reason, and not one byte
#     of the bad response (a marker in it) reaches the client; the
#     ErrorDocument configured for 502 is what the client gets;
#   - bytes a backend sends after a complete response never leak into the
#     next response on the same client connection;
#   - connection refused: 502, quickly; connect timeout (a loopback listener
#     whose accept queue is full, so SYNs are dropped): 504; no response
#     within timeout=1: 504, logged, and the client connection still works;
#   - a backend that closes mid-body (Content-Length or chunked) aborts the
#     client connection: never a complete-looking response;
#   - a client that disconnects while its request waits: the backend
#     connection is closed soon after, and the request is in the access log;
#   - AsyncProxyMaxParked 5 and 10 concurrent slow requests: 503 with
#     Retry-After for those beyond (event MPM; the worker MPM never parks,
#     so all 10 are served there);
#   - a pooled keep-alive backend connection that the backend closed while
#     idle, or that it closes when the next request arrives, is never a 502
#     (the request goes to a fresh connection).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use IO::Socket::INET;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);

my $t_start = time;
my $WATCH = tempdir('apx-watch-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# name => [raw response, marker, reason regex]
my %BAD = (
    status  => ["HTTP/1.1 2OO OK\r\nX-Marker: LEAK01\r\nContent-Length: 6\r\n\r\nLEAK01",
                'LEAK01', qr/malformed status line/],
    nocolon => ["HTTP/1.1 200 OK\r\nX-Good: 1\r\nThis line has no colon LEAK02\r\nContent-Length: 6\r\n\r\nLEAK02",
                'LEAK02', qr/header line without colon/],
    nul     => ["HTTP/1.1 200 OK\r\nX-Bad: a\x00b LEAK03\r\nContent-Length: 6\r\n\r\nLEAK03",
                'LEAK03', qr/invalid header value/],
    name    => ["HTTP/1.1 200 OK\r\nX-Bad\@Name: LEAK04\r\nContent-Length: 6\r\n\r\nLEAK04",
                'LEAK04', qr/invalid header name/],
    long    => ["HTTP/1.1 200 OK\r\nX-Marker: LEAK05\r\n"
                . join('', map { "X-Filler-$_: " . ('f' x 480) . "\r\n" } 1 .. 36)
                . "Content-Length: 6\r\n\r\nLEAK05",
                'LEAK05', qr/head too long/],
    chunk   => ["HTTP/1.1 200 OK\r\nX-Marker: LEAK06\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nLEAK06\r\n0\r\n\r\n",
                'LEAK06', qr/chunk size/],
    clte    => ["HTTP/1.1 200 OK\r\nX-Marker: LEAK07\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                . "6\r\nLEAK07\r\n0\r\n\r\n",
                'LEAK07', qr/Content-Length with Transfer-Encoding/],
    cl2     => ["HTTP/1.1 200 OK\r\nX-Marker: LEAK08\r\nContent-Length: 6\r\nContent-Length: 7\r\n\r\nLEAK08x",
                'LEAK08', qr/conflicting Content-Length/],
    cllist  => ["HTTP/1.1 200 OK\r\nX-Marker: LEAK09\r\nContent-Length: 6, 7\r\n\r\nLEAK09x",
                'LEAK09', qr/conflicting Content-Length/],
);

my $RACE_SERVED = 0;

sub handler {
    my ($req, $conn) = @_;
    my $t = $req->{target};
    my $resp = \&APX::Backend::response;
    return $BAD{$1}[0] if $t =~ m{^/bad/(\w+)$} && $BAD{$1};
    if ($t eq '/junk') {
        # a complete response, then a second one nobody asked for
        return [[send => $resp->(200, "ok\n") . "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nLEAK"], [keep => 1]];
    }
    if ($t eq '/junk-late') {
        return [[send => $resp->(200, "ok\n")], [sleep => 0.1],
                [send => "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nLEAK"], [keep => 1]];
    }
    return [[sleep => 3], [send => $resp->(200, "late\n")]] if $t eq '/sleep3';
    if ($t eq '/short-cl') {
        return [[send => "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" . ('s' x 100)], [sleep => 0.3],
                [close => 1]];
    }
    if ($t eq '/short-chunked') {
        return [[send => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" . ('c' x 100) . "\r\n"],
                [sleep => 0.3], [close => 1]];
    }
    if ($t =~ m{^/watch/(\w+)$}) {
        # wait up to 3 s for the proxy to close this connection; record when
        my $tag = $1;
        my $sel = IO::Select->new($conn->{sock});
        my $end = time + 3;
        my $what = 'none';
        while ((my $left = $end - time) > 0) {
            next unless $sel->can_read($left);
            my $n = sysread($conn->{sock}, my $junk, 4096);
            if (!$n) { $what = 'eof'; last }
        }
        if (open my $fh, '>', "$WATCH/$tag") { print $fh "$what " . time . "\n"; close $fh }
        return [[close => 1]] if $what eq 'eof';
        return [[send => $resp->(200, "watched\n")], [close => 1]];
    }
    if ($t eq '/ka-idle-close') {
        # keep-alive answer, then the backend closes the idle connection
        return [[send => $resp->(200, "first\n")], [sleep => 0.2], [close => 1]];
    }
    if ($t eq '/ka-race') {
        # a 2nd /ka-race on a connection: closed without a byte (as when the
        # backend's idle timeout fires just as the request arrives). Each
        # connection runs in its own process, so the flag is per connection.
        return [[close => 1]] if $RACE_SERVED;
        $RACE_SERVED = 1;
        return [[send => $resp->(200, "race ok\n")], [keep => 1]];
    }
    return $resp->(200, "echo $req->{method} $t\n");
}

sub new_log {
    my ($h, $off) = @_;
    my $all = $h->slurp_log;
    my $new = substr($all, $$off);
    $$off = length $all;
    return $new;
}

# one request on a fresh connection, Connection: close; returns (parsed
# response or undef, all raw bytes received, elapsed seconds)
sub fetch_raw {
    my ($port, $path, $timeout) = @_;
    my $t0 = time;
    my $s = connect_to($port);
    send_raw($s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    my ($raw, $eof) = read_to_eof($s, $timeout // 10);
    my $elapsed = time - $t0;
    my $r = length($raw) ? read_response_from_string($raw) : undef;
    return ($r, $raw, $elapsed, $eof);
}

sub read_response_from_string {
    my ($raw) = @_;
    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    return undef unless defined $body;
    my ($sl, @l) = split /\r\n/, $head;
    my %h = map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () } @l;
    return { status => ($sl =~ /^HTTP\/1\.\d (\d{3})/)[0] // 0, headers => \%h, body => $body };
}

for my $mpm (qw(event worker)) {
    note "=== MPM $mpm ===";
    my $be = APX::Backend->new(handler => \&handler);
    my $BP = $be->port;
    my $B = "127.0.0.1:$BP";
    my $sd = start_slowd();
    my $DEAD = APX::Httpd::free_port();    # nothing listens there
    # a listener that never accepts, its queue filled: connects to it hang
    my $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, ReuseAddr => 1)
        or die "listen: $!";
    my $HOLE = $hole->sockport;
    my @fill = map { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $HOLE, Blocking => 0) } 1 .. 4;

    my $conf = ref_conf(<<"EOF");
ErrorDocument 502 /errors/502.html
AsyncProxyPass /errors/ !
AsyncProxyPass /be/ http://$B/ timeout=10
AsyncProxyPass /t1/ http://$B/ timeout=1
AsyncProxyPass /refused/ http://127.0.0.1:$DEAD/
AsyncProxyPass /hole/ http://127.0.0.1:$HOLE/ connecttimeout=1 timeout=10
AsyncProxyPass /slow/ http://127.0.0.1:$sd->{port}/
EOF
    my $h = APX::Httpd->new(mpm => $mpm, threads => 25, conf => $conf,
                            global => ref_conf("AsyncProxyParkDelay 0\nAsyncProxyMaxParked 5\nAsyncProxyRetryAfter 7"),
                            ref_httpd_opts());
    mkdir $h->dir . '/htdocs/errors';
    $h->write_file('htdocs/errors/502.html', "custom 502 page\n");
    $h->start;
    my $HP = $h->port;
    my %f0 = %{ figures($HP) };
    my $off = length $h->slurp_log;
    my @expected_log;    # error-log lines this test provoked and checked

    # --- malformed responses: 502, logged, nothing leaks ------------------
    for my $case (sort keys %BAD) {
        my ($raw_resp, $marker, $reason) = @{ $BAD{$case} };
        my ($r, $raw) = fetch_raw($HP, "/be/bad/$case");
        is($r && $r->{status}, 502, "[$mpm] bad response '$case': 502");
        ok(index($raw, $marker) < 0, "[$mpm] bad response '$case': no byte of it reaches the client")
            or diag 'client got: ' . substr($raw, 0, 400);
        like($r && $r->{body}, qr/^custom 502 page\n\z/, "[$mpm] bad response '$case': the ErrorDocument for 502 is used");
        my $log = '';
        wait_for(sub { $log .= new_log($h, \$off); $log =~ /\Q$B\E/ }, 3);
        my @lines = grep { /\Q$B\E/ } split /\n/, $log;
        ok(scalar(grep { /:error\]/ && $_ =~ $reason } @lines),
           "[$mpm] bad response '$case': an error-log line names $B and the reason")
            or diag "log:\n$log";
        push @expected_log, @lines;
    }

    # --- bytes after a complete response never leak -----------------------
    for my $junk (qw(/junk /junk-late)) {
        my $s = connect_to($HP);
        my $buf = '';
        send_raw($s, "GET /be$junk HTTP/1.1\r\nHost: x\r\n\r\n");
        my $r1 = read_response($s, \$buf);
        is($r1 && $r1->{body}, "ok\n", "[$mpm] $junk: the complete response");
        sleep 0.3;
        my @got;
        for my $k (1 .. 3) {
            send_raw($s, "GET /be/after$k HTTP/1.1\r\nHost: x\r\n\r\n");
            push @got, read_response($s, \$buf);
        }
        for my $k (1 .. 3) {
            my $r = $got[$k - 1];
            is($r && $r->{body}, "echo GET /after$k\n", "[$mpm] $junk: next request $k gets its own response, no LEAK");
        }
        ok(!grep({ $_ && $_->{raw} =~ /LEAK/ } @got) && $buf !~ /LEAK/, "[$mpm] $junk: LEAK never seen");
    }
    $off = length $h->slurp_log;    # (whatever these logged is checked at the end)

    # --- refused, connect timeout, response timeout ----------------------
    {
        my ($r, $raw, $el) = fetch_raw($HP, '/refused/x');
        is($r && $r->{status}, 502, "[$mpm] connection refused: 502");
        cmp_ok($el, '<', 3, "[$mpm] ... quickly (" . sprintf('%.2f', $el) . " s)");
        my $log = '';
        wait_for(sub { $log .= new_log($h, \$off); $log =~ /127\.0\.0\.1:$DEAD\b/ }, 3);
        like($log, qr/:error\].*127\.0\.0\.1:$DEAD\b/, "[$mpm] ... logged naming 127.0.0.1:$DEAD") or diag $log;
        push @expected_log, grep { /127\.0\.0\.1:$DEAD\b/ } split /\n/, $log;
    }
    {
        my ($r, $raw, $el) = fetch_raw($HP, '/hole/x', 15);
        is($r && $r->{status}, 504, "[$mpm] connect timeout (connecttimeout=1, queue full): 504");
        cmp_ok($el, '>=', 0.9, "[$mpm] ... after the connect timeout (" . sprintf('%.2f', $el) . " s)");
        cmp_ok($el, '<', 5, "[$mpm] ... not after the response timeout");
        my $log = '';
        wait_for(sub { $log .= new_log($h, \$off); $log =~ /127\.0\.0\.1:$HOLE\b/ }, 3);
        like($log, qr/:error\].*127\.0\.0\.1:$HOLE\b/, "[$mpm] ... logged naming 127.0.0.1:$HOLE") or diag $log;
        push @expected_log, grep { /127\.0\.0\.1:$HOLE\b/ } split /\n/, $log;
    }
    {
        my $s = connect_to($HP);
        my $buf = '';
        my $t0 = time;
        send_raw($s, "GET /t1/sleep3 HTTP/1.1\r\nHost: x\r\n\r\n");
        my $r = read_response($s, \$buf);
        my $el = time - $t0;
        is($r && $r->{status}, 504, "[$mpm] no response within timeout=1: 504");
        cmp_ok($el, '<', 2.8, "[$mpm] ... before the backend answers (" . sprintf('%.2f', $el) . " s)");
        send_raw($s, "GET /be/after-504 HTTP/1.1\r\nHost: x\r\n\r\n");
        $r = read_response($s, \$buf);
        is($r && $r->{body}, "echo GET /after-504\n", "[$mpm] ... the next request on the same client connection works");
        ok(wait_for(sub { $h->slurp_log($h->access_log) =~ m{"GET /t1/sleep3 HTTP/1\.1" 504 } }, 3),
           "[$mpm] ... and the 504 is in the access log");
        my $log = '';
        wait_for(sub { $log .= new_log($h, \$off); $log =~ /\Q$B\E/ }, 2);
        like($log, qr/:error\].*\Q$B\E/, "[$mpm] ... the timeout is logged naming $B") or diag $log;
        push @expected_log, grep { /\Q$B\E/ } split /\n/, $log;
    }

    # --- backend closes mid-body: the client connection is aborted --------
    {
        my ($r, $raw, $el, $eof) = fetch_raw($HP, '/be/short-cl');
        my ($head, $body) = split /\r\n\r\n/, $raw, 2;
        $body //= '';
        ok($eof, "[$mpm] backend closes mid-body (Content-Length 1000, 100 sent): the client sees EOF");
        if (($r && $r->{headers}{'transfer-encoding'} // '') =~ /chunked/) {
            unlike($body, qr/(?:^|\r\n)0\r\n\r\n\z/, "[$mpm] ... re-chunked, but never the terminating 0-chunk");
        }
        else {
            cmp_ok(length $body, '<', 1000, "[$mpm] ... fewer body bytes than Content-Length, never a whole response");
        }
        note "[$mpm] short-cl: status seen: " . ($r ? $r->{status} : 'none');

        ($r, $raw, $el, $eof) = fetch_raw($HP, '/be/short-chunked');
        ok($eof, "[$mpm] backend closes mid-body (chunked): the client sees EOF");
        unlike($raw, qr/\r\n0\r\n(?:[^\r\n]+\r\n)*\r\n\z/, "[$mpm] ... and never the terminating 0-chunk");
        like($raw, qr/^HTTP\/1\.1 200 /, "[$mpm] ... after the head already sent") if $raw =~ /c{100}/;
        push @expected_log, grep { /\Q$B\E/ } split /\n/, new_log($h, \$off);
    }

    # --- the client leaves while its request waits ------------------------
    {
        my $tag = "gone_$mpm";
        my $s = connect_to($HP);
        send_raw($s, "GET /be/watch/$tag HTTP/1.1\r\nHost: x\r\n\r\n");
        sleep 0.3;
        my $closed_at = time;
        close $s;
        ok(wait_for(sub { -s "$WATCH/$tag" }, 5), "[$mpm] client gone while waiting: the backend handler saw an outcome");
        my $rec = do { open my $fh, '<', "$WATCH/$tag"; local $/; <$fh> } // '';
        my ($what, $when) = split ' ', $rec;
        is($what, 'eof', "[$mpm] ... the proxy closed the backend connection");
        cmp_ok(($when // 99) - $closed_at, '<', 1.5, "[$mpm] ... soon after the client left");
        ok(wait_for(sub { $h->slurp_log($h->access_log) =~ m{"GET /be/watch/$tag HTTP/1\.1" } }, 5),
           "[$mpm] ... and the request is in the access log");
        push @expected_log, grep { /\Q$B\E/ } split /\n/, new_log($h, \$off);
    }

    # --- AsyncProxyMaxParked 5, 10 concurrent slow requests ---------------
    {
        # Deterministic on a busy machine: on the event MPM the last five
        # are sent only once the server counts the first five parked (the
        # backend holds them 4 s, far longer than that takes).
        my $parking = $mpm eq 'event' && !ref_mode();
        my $p0 = $parking ? (figure($HP, 'ParkedRequests') // 0) : 0;
        my @socks = map { connect_to($HP) } 1 .. 10;
        my $req = "GET /slow/delay/" . ($parking ? 4000 : 1500) . "/8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        send_raw($_, $req) for @socks[0 .. 4];
        ok(wait_for(sub { (figure($HP, 'ParkedRequests') // 0) - $p0 >= 5 }, 10),
           "[$mpm] the first five are parked before the next five are sent") if $parking;
        send_raw($_, $req) for @socks[5 .. 9];
        my @r = map { my $b = ''; read_response($_, \$b, timeout => 10) } @socks;
        my @ok = grep { $_ && $_->{status} == 200 } @r;
        my @busy = grep { $_ && $_->{status} == 503 } @r;
        is(@ok + @busy, 10, "[$mpm] 10 concurrent slow requests: each a 200 or a 503");
        if ($mpm eq 'event' && !ref_mode()) {
            cmp_ok(scalar @busy, '>=', 1, "[$mpm] AsyncProxyMaxParked 5: some get 503 (" . scalar(@busy) . ")");
            cmp_ok(scalar @ok, '>=', 5, "[$mpm] ... the 5 parked ones are served (" . scalar(@ok) . ")");
            ok(@busy && !grep({ ($_->{headers}{'retry-after'} // '') ne '7' } @busy),
               "[$mpm] ... every 503 carries Retry-After: 7 (AsyncProxyRetryAfter)");
            ok(!grep({ $_->{body} ne pattern_body(8) } @ok), "[$mpm] ... the served ones are whole");
        }
        else {
            is(scalar @ok, 10, "[$mpm] the synchronous driver never parks: AsyncProxyMaxParked does not apply, all 10 served");
        }
        my $log = new_log($h, \$off);
        push @expected_log, grep { /APX00013/ } split /\n/, $log;
    }

    # --- a pooled connection closed by the backend is never a 502 ---------
    {
        my $r = http_request($HP, 'GET', '/be/ka-idle-close');
        is($r && $r->{body}, "first\n", "[$mpm] keep-alive answer from a backend that then closes the idle connection");
        sleep 0.5;
        for my $k (1 .. 2) {
            $r = http_request($HP, 'GET', "/be/after-idle-close$k");
            is($r && $r->{status}, 200, "[$mpm] the next GET after the idle close ($k): 200, not 502");
        }
        my $n0 = () = $be->requests;
        $r = http_request($HP, 'GET', '/be/ka-race');
        is($r && $r->{body}, "race ok\n", "[$mpm] race: first request on a backend connection");
        sleep 0.1;
        $r = http_request($HP, 'GET', '/be/ka-race');
        is($r && $r->{status}, 200, "[$mpm] race: the pooled connection closes without a byte: still 200 (retried)");
        is($r && $r->{body}, "race ok\n", "[$mpm] ... answered on a fresh backend connection");
        my @reqs = ($be->wait_requests($n0 + 3))[$n0 .. $n0 + 2];
        my @conns = map { $_ ? $_->{conn_id} : -1 } @reqs;
        ok($conns[1] == $conns[0] && $conns[2] != $conns[0],
           "[$mpm] ... the retry went to a new connection (backend conn ids @conns)");
        push @expected_log, grep { /\Q$B\E/ } split /\n/, new_log($h, \$off);
    }

    unless (ref_mode()) {
        my %f1 = %{ figures($HP) };
        my %d = map { $_ => ($f1{$_} // 0) - ($f0{$_} // 0) } grep { $f1{$_} =~ /^\d+$/ } keys %f1;
        note "[$mpm] figure changes: " . join ' ', map { "$_=$d{$_}" } sort keys %d;
        is($d{BadGateway}, scalar(keys %BAD) + 1, "[$mpm] AsyncProxyBadGateway counts the malformed responses and the refused connect");
        is($d{GatewayTimeout}, 2, "[$mpm] AsyncProxyGatewayTimeout counts the connect and response timeouts");
        cmp_ok($d{BackendRetries}, '>=', 1, "[$mpm] AsyncProxyBackendRetries counts the retry on a fresh connection");
        cmp_ok($d{ClientGone}, '>=', 1, "[$mpm] AsyncProxyClientGone counts the client that left");
        if ($mpm eq 'event') {
            cmp_ok($d{Unavailable}, '>=', 1, "[$mpm] AsyncProxyUnavailable counts the 503s");
        }
        else {
            is($d{ParkedTotal}, 0, "[$mpm] nothing was parked");
        }
    }

    $h->stop;
    my %exp = map { $_ => 1 } @expected_log;
    my @bad = grep { !$exp{$_} } $h->error_lines;
    is_deeply(\@bad, [], "[$mpm] no error-log line other than the ones checked above") or diag join "\n", @bad;
    stop_slowd($sd);
    $be->stop;
    close $_ for grep { $_ } @fill;
    close $hole;
}

cmp_ok(time - $t_start, '<', 300, sprintf('the file ends in bounded time (%.0f s; a hang would not)', time - $t_start));
done_testing;
