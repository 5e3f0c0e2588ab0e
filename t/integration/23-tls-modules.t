#!/usr/bin/perl
# The module with the httpd modules users put around a proxy:
#   - mod_ssl (event MPM, AsyncProxyParkDelay 0 so every request parks):
#     proxied GET and POST over TLS, keep-alive reuse of one TLS
#     connection across parked requests (the module adopts it and reads the
#     later requests through mod_ssl), slow backends parked over TLS;
#   - mod_deflate compresses proxied responses (also parked ones) and they
#     decompress to the backend's bytes;
#   - mod_headers applies to proxied responses;
#   - the access log records the real status and size of proxied responses
#     (200 with its body size, 502, 504);
#   - ErrorDocument 502 serves the custom page for a bad backend response.
# HTTP/2 is not tested here (optional).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use Time::HiRes qw(sleep time);

plan skip_all => 'build/bench/slowd is not built (make -C bench slowd)'
    unless -x ($ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd');
my $have_ssl = eval { require IO::Socket::SSL; 1 };

my $sd = start_slowd();
my $b = APX::Backend->new(handler => sub {
    my ($req) = @_;
    my $t = $req->{target};
    return "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
         . length($req->{body}) . "\r\n\r\n" . $req->{body} if $t eq '/echo';
    return "garbage that is no status line\r\n\r\n" if $t eq '/bad';
    return [[sleep => 3], [send => APX::Backend::response(200, "late\n")]] if $t eq '/slow';
    return APX::Backend::response(404, "no\n");
});
my $bport = $b->port;
my $MAPS = "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n"
         . "AsyncProxyPass /b/ http://127.0.0.1:$bport/ timeout=1\n";

# The access log lines matching $re; waits up to 3 s for at least $min of
# them (a request is logged just after its response went out).
sub access_lines {
    my ($h, $re, $min) = @_;
    my @l;
    wait_for(sub { @l = grep { $_ =~ $re } split /\n/, $h->slurp_log($h->access_log); @l >= ($min // 1) }, 3);
    return @l;
}

# "... \"GET /x HTTP/1.1\" STATUS BYTES USEC CONNID" -> (status, bytes, connid)
sub log_fields { my ($l) = @_; return ($l // '') =~ /" (\d{3}) (\S+) \d+ (\S+)$/ }

# ------------------------------------------------------------------ TLS
SKIP: {
    skip 'IO::Socket::SSL is not installed', 20 unless $have_ssl;
    my $h = APX::Httpd->new(mpm => 'event', threads => 10, tls => 1,
                            global => "AsyncProxyWorkers 2 8\n",
                            conf => $MAPS . "AsyncProxyParkDelay 0\n");
    $h->start;
    my $tls = sub { connect_tls($h->port) };
    my $tls_request = sub { my ($bytes) = @_; return request($h->port, $bytes, tls => 1) };
    # the status page over plain HTTP is not available here: ask over TLS
    my $tstatus = sub { figures($h->port, tls => 1) };
    my $st0 = $tstatus->();
    is($st0->{Mode}, 'async', 'TLS: the child runs in async mode');

    my $r = $tls_request->(get_req('/s/delay/0/1000', Connection => 'close'));
    is($r && $r->{status}, 200, 'TLS: proxied GET answered 200');
    is($r && $r->{body}, pattern_body(1000), 'TLS: with the backend body');

    my $post = pattern_body(100_000);
    $r = $tls_request->("POST /b/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        . "Content-Type: application/octet-stream\r\nContent-Length: "
                        . length($post) . "\r\n\r\n$post");
    is($r && $r->{status}, 200, 'TLS: proxied POST answered 200');
    ok($r && $r->{body} eq $post, 'TLS: the 100 kB body went to the backend and came back intact');
    my ($posted) = grep { $_->{target} eq '/echo' } $b->requests;
    ok($posted && $posted->{body} eq $post, 'TLS: the backend received the POST body intact');
    my $st1 = $tstatus->();
    cmp_ok(($st1->{ParksTotal} // 0) - ($st0->{ParksTotal} // 0), '>=', 2,
           'TLS: the GET and the POST were parked (AsyncProxyParkDelay 0)');

    # keep-alive: one TLS connection, parked requests and others in turn
    {
        my $before = $tstatus->();
        my $s = $tls->();
        my $buf = '';
        my @paths = ('/s/delay/300/10', '/s/delay/0/20', '/s/delay/300/30');
        my $ok = 0;
        for my $p (@paths) {
            print $s get_req($p);
            my $x = read_response($s, \$buf, timeout => 5);
            my ($n) = $p =~ /(\d+)$/;
            $ok++ if $x && $x->{status} == 200 && $x->{body} eq pattern_body($n);
        }
        print $s "POST /b/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello";
        my $x = read_response($s, \$buf, timeout => 5);
        $ok++ if $x && $x->{status} == 200 && $x->{body} eq 'hello';
        is($ok, 4, 'TLS keep-alive: 4 requests (parked GETs, a POST) on one TLS connection');
        close $s;
        my @ids = map { (log_fields($_))[2] } access_lines($h, qr{"(GET /s/delay/(300/10|0/20|300/30)|POST /b/echo) HTTP/1\.1" 200 }, 5);
        my %ids = map { $_ => 1 } @ids[-4 .. -1];
        is(scalar keys %ids, 1, 'TLS keep-alive: the access log shows one connection for the 4 requests');
        my $after = $tstatus->();
        cmp_ok(($after->{AdoptedTotal} // 0) - ($before->{AdoptedTotal} // 0), '>=', 1,
               'TLS keep-alive: the connection was adopted by the module');
        cmp_ok(($after->{ParksTotal} // 0) - ($before->{ParksTotal} // 0), '>=', 3,
               'TLS keep-alive: its requests were parked');
    }

    # slow backend over TLS: the requests are parked
    {
        my @s = map { my $s = $tls->(); print $s get_req('/s/delay/1500/100'); $s } 1 .. 5;
        my $max = 0;
        wait_for(sub { my $p = $tstatus->()->{ParkedNow} // 0; $max = $p if $p > $max; $max >= 5 }, 1.2);
        cmp_ok($max, '>=', 5, "TLS: 5 slow requests are parked at once (ParkedNow $max)");
        my $good = 0;
        for my $s (@s) {
            my $buf = '';
            my $x = read_response($s, \$buf, timeout => 5);
            $good++ if $x && $x->{status} == 200 && $x->{body} eq pattern_body(100);
        }
        is($good, 5, 'TLS: the parked requests complete with their bodies');
        my (undef, $closed) = read_to_eof($s[0], 0.2);
        ok(!$closed, 'TLS: the connection stays open for keep-alive');
        close $_ for @s;
    }
    # Each status request is a new TLS connection, which the module may adopt
    # itself to await its head (AsyncProxyAdoptSlowHeads): it then counts in
    # AdoptedNow, and its head wait keeps the shedding timer parked
    # (ParkedNow). So: no request in flight or parked, no idle connection,
    # and no adopted connection but the asking one (HeadsAdopted moved by
    # one since the previous look when it was adopted; nothing else connects
    # now). A previous look's connection still in its lingering close makes
    # the next look try again.
    my $st = {};
    my $prev = $tstatus->();
    ok(wait_for(sub {
           $st = $tstatus->();
           my $self = ($st->{HeadsAdopted} // 0) - ($prev->{HeadsAdopted} // 0);
           $prev = $st;
           ($st->{InFlight} // -1) == 0 && ($st->{ParkedRequests} // -1) == 0
               && ($st->{IdleNow} // -1) == 0 && ($st->{AdoptedNow} // -1) == $self
       }, 5),
       'TLS: nothing stays parked or adopted') or diag explain $st;
    is($st->{StacksInUse}, 0, 'TLS: no coroutine stack left in use');
    ok($h->stop, 'TLS server stops');
    is_deeply([$h->error_lines], [], 'TLS server: no error-log line at level error or above');
    unlike($h->slurp_log, qr/APX0010[0-9]/, 'TLS server: no proxy error logged at all');
    my @ssl_err = grep { /ssl:(error|crit)/ } split /\n/, $h->slurp_log;
    is_deeply(\@ssl_err, [], 'TLS server: mod_ssl logged no error');
}

# ---------------------------------------------------- mod_deflate, headers, log
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 10, modules => ['filter', 'deflate'],
                            global => "AsyncProxyWorkers 2 8\n",
                            conf => $MAPS
                                  . "AddOutputFilterByType DEFLATE text/plain\n"
                                  . "Header set X-Test 1\n"
                                  . "ErrorDocument 502 /err.html\n");
    $h->write_file('htdocs/err.html', "<html><body>custom 502 page</body></html>\n");
    $h->start;
    my $port = $h->port;
    my $st0 = figures($port);

    for my $delay (0, 300) {
        my $what = $delay ? 'parked' : 'fast';
        my $r = request($port, get_req("/s/delay/$delay/20000", 'Accept-Encoding' => 'gzip',
                                       Connection => 'close'));
        is($r && $r->{status}, 200, "deflate ($what): 200");
        is($r && $r->{headers}{'content-encoding'}, 'gzip', "deflate ($what): Content-Encoding: gzip");
        my $plain;
        gunzip(\($r ? $r->{body} : ''), \$plain) or diag "gunzip: $GunzipError";
        ok(defined $plain && $plain eq pattern_body(20000), "deflate ($what): decompresses to the backend's 20000 bytes");
        cmp_ok(length($r ? $r->{body} : ''), '<', 20000, "deflate ($what): and is smaller");
        is($r && $r->{headers}{'x-test'}, '1', "mod_headers ($what): X-Test: 1 on the proxied response");
    }
    {
        my $r = request($port, get_req('/s/delay/0/1000', Connection => 'close'));
        ok($r && !$r->{headers}{'content-encoding'} && $r->{body} eq pattern_body(1000),
           'no Accept-Encoding: identity body');
        my ($st, $bytes) = log_fields((access_lines($h, qr{"GET /s/delay/0/1000 HTTP/1\.1"}))[-1]);
        is("$st $bytes", '200 1000', 'access log: 200 with the body size 1000');
        my ($gst, $gbytes) = log_fields((access_lines($h, qr{"GET /s/delay/300/20000 HTTP/1\.1"}))[-1]);
        is($gst, 200, 'access log: parked gzip response logged 200');
        cmp_ok($gbytes, '<', 20000, "access log: with its compressed size ($gbytes)");
    }
    {
        my $r = request($port, get_req('/b/bad', Connection => 'close'));
        is($r && $r->{status}, 502, 'bad backend response: 502');
        like($r && $r->{body}, qr/custom 502 page/, 'ErrorDocument 502 serves the custom page');
        unlike($r && $r->{body}, qr/garbage/, '... and nothing of the bad response');
        my ($st) = log_fields((access_lines($h, qr{"GET /b/bad HTTP/1\.1"}))[-1]);
        is($st, 502, 'access log: 502');
    }
    {
        my $t0 = time;
        my $r = request($port, get_req('/b/slow', Connection => 'close'), timeout => 10);
        my $took = time - $t0;
        is($r && $r->{status}, 504, sprintf('backend timeout (timeout=1): 504 (after %.1f s)', $took));
        cmp_ok($took, '<', 2.9, '... before the backend answered');
        my ($st) = log_fields((access_lines($h, qr{"GET /b/slow HTTP/1\.1"}))[-1]);
        is($st, 504, 'access log: 504');
    }
    my $st1 = figures($port);
    is(($st1->{BadGateway} // 0) - ($st0->{BadGateway} // 0), 1, 'the 502 is counted (BadGateway)');
    is(($st1->{GatewayTimeout} // 0) - ($st0->{GatewayTimeout} // 0), 1, 'the 504 is counted (GatewayTimeout)');
    ok($h->stop, 'server stops');
    my @expected = (qr/APX00103: bad response from backend 127\.0\.0\.1:$bport for \S*\/bad\b/,
                    qr/APX00106: backend 127\.0\.0\.1:$bport timed out \(1000 ms\) .*for \S*\/slow\b/);
    is_deeply([$h->error_lines(@expected)], [], 'no error-log line but the 502 and 504 ones provoked');
    my $log = $h->slurp_log;
    like($log, $expected[0], 'the bad response is logged (APX00103)');
    like($log, $expected[1], 'the backend timeout is logged (APX00106)');
}

$b->stop;
stop_slowd($sd);
done_testing;
