#!/usr/bin/perl
# What a proxy must decide itself (issue 10, items 5 and 6), under the event
# MPM (requests parked) and the worker MPM (synchronous driver):
#
# - CONNECT gets 405 and never reaches a backend.
# - Max-Forwards (RFC 9110 §7.6.2): OPTIONS with 0 is answered by the proxy
#   (200, Allow, Content-Length 0, no body); TRACE with 0 as httpd answers
#   its own TRACE (echo as message/http; 405 when TraceEnable is off, for
#   every TRACE then); any other value is forwarded decremented; an invalid
#   value gets 400 (the choice documented in the README).
# - Dot segments a backend resolves but httpd does not remove — "..;" (Tomcat
#   and Jetty read it as ".."), ".." behind an encoded slash (%2F, %5C) with
#   AllowEncodedSlashes NoDecode or On — never take a backend path outside
#   the mapping's base: the request falls back to httpd's normalised path,
#   and is refused with 400 when that would still climb out.
#   Checked on what the backend saw: every target it received, resolved the
#   way such a backend resolves it, stays under the mapping's base.
# - max= and ttl= are per mapping: two mappings to one backend with max=1
#   and max=50 each keep their own number of idle connections (counted on
#   the backend: which connections the second wave of requests reused), and
#   a third mapping with equal options shares the max=50 pool.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use File::Temp qw(tempdir);
use Fcntl qw(:flock);
use Time::HiRes qw(sleep time);

# Resolves a request target as a lenient backend does: segments split at
# '/', '\' and their encodings, what follows ';' in a segment ignored, "."
# and ".." (also %2e-spelt) resolved. Returns the resolved path, or undef
# when it climbs above the root.
sub backend_resolve {
    my ($target) = @_;
    (my $p = $target) =~ s/[?#].*//s;
    $p =~ s/%([0-9a-fA-F]{2})/chr hex $1/ge;
    my @out;
    for my $seg (split m{[/\\]}, $p, -1) {
        (my $s = $seg) =~ s/;.*//s;
        if ($s eq '..') { return undef unless @out > 1; pop @out }
        elsif ($s eq '.') { }
        else { push @out, $seg }
    }
    return join '/', @out;
}

sub under {
    my ($target, $base) = @_;
    my $r = backend_resolve($target);
    return defined $r && index("$r/", $base) == 0;
}

my $be = APX::Backend->new(handler => sub {
    my ($req) = @_;
    my $mf = $req->{hdr}{'max-forwards'} // 'none';
    return APX::Backend::response(200, "$req->{method} $req->{target} mf=$mf\n");
});
my $B = '127.0.0.1:' . $be->port;

sub n_requests { my @r = $be->requests; return scalar @r }

# The request the backend received after $n0 (undef if none within 5 s).
sub received_after {
    my ($n0) = @_;
    my @r = $be->wait_requests($n0 + 1, 5);
    return $r[$n0];
}

for my $mpm (qw(event worker)) {
    note "=== MPM $mpm ===";
    my $P2 = APX::Httpd::free_port();
    my $conf = <<"EOF";
AllowEncodedSlashes NoDecode
AsyncProxyPass /app/ http://$B/base/
<Location /loc/>
    AsyncProxyPass http://$B/lbase/
</Location>
<Location /app/errsrc/>
    ErrorDocument 400 /app/errdoc400
</Location>
<Location /missing/>
    ErrorDocument 404 /app/errdoc404
</Location>
EOF
    my $global = <<"EOF";
AsyncProxyParkDelay 0
Listen 127.0.0.1:$P2
<VirtualHost 127.0.0.1:$P2>
    ServerName on.example
    AllowEncodedSlashes On
    TraceEnable off
    AsyncProxyPass /app/ http://$B/base/
    AsyncProxyPass / http://$B/base/root/
</VirtualHost>
EOF
    my $h = APX::Httpd->new(mpm => $mpm, threads => 10, conf => $conf, global => $global);
    $h->start;
    my $HP = $h->port;
    my %port = (NoDecode => $HP, On => $P2);

    # --- CONNECT ------------------------------------------------------------
    # httpd gives a CONNECT host:port the path "/": the second virtual host
    # maps "/", so without the module's check it would be proxied.
    {
        my $n0 = n_requests();
        my $r = request($P2, "CONNECT 127.0.0.1:" . $be->port . " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        is($r && $r->{status}, 405, "[$mpm] CONNECT host:port where \"/\" is proxied: 405");
        unlike($r && $r->{headers}{allow} // '', qr/CONNECT/, "[$mpm] ... its Allow does not offer CONNECT");
        like($r && $r->{headers}{allow} // '', qr/GET/, "[$mpm] ... but GET")
            or diag explain $r && $r->{headers};
        sleep 0.2;
        is(n_requests(), $n0, "[$mpm] ... and no backend saw it");
    }
    {
        # a path as CONNECT's target: httpd itself refuses it (400)
        my $n0 = n_requests();
        my $r = request($HP, "CONNECT /app/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        like($r && $r->{status}, qr/^40[05]$/, "[$mpm] CONNECT /app/x: refused (" . ($r ? $r->{status} : 'none') . ")");
        sleep 0.2;
        is(n_requests(), $n0, "[$mpm] ... and no backend saw it");
    }

    # --- OPTIONS / TRACE with Max-Forwards: 0 ---------------------------------
    for my $path ('/app/opt', '/loc/opt') {
        my $n0 = n_requests();
        my $r = request($HP, "OPTIONS $path HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n");
        is($r && $r->{status}, 200, "[$mpm] OPTIONS $path, Max-Forwards 0: 200 from the proxy");
        like($r && $r->{headers}{allow} // '', qr/\bOPTIONS\b/, "[$mpm] ... with an Allow header")
            or diag explain $r && $r->{headers};
        is($r && $r->{headers}{'content-length'}, '0', "[$mpm] ... Content-Length 0");
        is($r && $r->{body}, '', "[$mpm] ... no body");
        sleep 0.2;
        is(n_requests(), $n0, "[$mpm] ... no backend saw it");
    }
    {
        my $n0 = n_requests();
        my $r = request($HP, "TRACE /app/tr HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nX-Probe: p1\r\nConnection: close\r\n\r\n");
        is($r && $r->{status}, 200, "[$mpm] TRACE, Max-Forwards 0 (TraceEnable on): 200 from the proxy");
        like($r && $r->{headers}{'content-type'} // '', qr{^message/http}, "[$mpm] ... as message/http");
        like($r && $r->{body} // '', qr{^TRACE /app/tr HTTP/1.1\r?\n.*X-Probe: p1}s, "[$mpm] ... echoing the request");
        sleep 0.2;
        is(n_requests(), $n0, "[$mpm] ... no backend saw it");
    }
    for my $mf ('', "Max-Forwards: 0\r\n", "Max-Forwards: 7\r\n") {
        # TraceEnable off in the second virtual host: 405 for every TRACE
        my $n0 = n_requests();
        my $r = request($P2, "TRACE /app/tr HTTP/1.1\r\nHost: x\r\n${mf}Connection: close\r\n\r\n");
        (my $label = $mf) =~ s/\r\n//;
        is($r && $r->{status}, 405, "[$mpm] TRACE ($label) with TraceEnable off: 405");
        sleep 0.2;
        is(n_requests(), $n0, "[$mpm] ... no backend saw it");
    }

    # --- Max-Forwards decremented -------------------------------------------
    for my $case (['OPTIONS', '3', '2'], ['TRACE', '5', '4'], ['GET', '1', '0'], ['GET', '0', '0'],
                  ['POST', '10', '9'], ['OPTIONS', '99999999999999999999', '999999999'],
                  ['OPTIONS', undef, 'none']) {
        my ($m, $in, $out) = @$case;
        my $n0 = n_requests();
        my $hdr = defined $in ? "Max-Forwards: $in\r\n" : '';
        my $body = $m eq 'POST' ? "Content-Length: 2\r\n\r\nhi" : "\r\n";
        my $r = request($HP, "$m /app/mf HTTP/1.1\r\nHost: x\r\n${hdr}Connection: close\r\n$body");
        my $label = defined $in ? $in : 'absent';
        is($r && $r->{status}, 200, "[$mpm] $m, Max-Forwards $label: proxied");
        my $got = received_after($n0);
        is($got && ($got->{hdr}{'max-forwards'} // 'none'), $out, "[$mpm] ... the backend got Max-Forwards $out");
    }
    for my $bad ('abc', '-1', '1.5', '+3', '2, 3') {
        my $n0 = n_requests();
        my $r = request($HP, "OPTIONS /app/mf HTTP/1.1\r\nHost: x\r\nMax-Forwards: $bad\r\nConnection: close\r\n\r\n");
        is($r && $r->{status}, 400, "[$mpm] Max-Forwards '$bad': 400");
        sleep 0.1;
        is(n_requests(), $n0, "[$mpm] ... no backend saw it");
    }
    {
        # two Max-Forwards fields: httpd joins them into "2, 3", invalid
        my $n0 = n_requests();
        my $r = request($HP, "GET /app/mf HTTP/1.1\r\nHost: x\r\nMax-Forwards: 2\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n");
        is($r && $r->{status}, 400, "[$mpm] two Max-Forwards fields: 400");
        sleep 0.1;
        is(n_requests(), $n0, "[$mpm] ... no backend saw it");
    }

    {
        # an internal redirect shares the request's headers: one hop, one
        # decrement (the refused request's ErrorDocument is proxied)
        my $n0 = n_requests();
        request($HP, "GET /app/errsrc/..;/..;/x HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\nConnection: close\r\n\r\n");
        my $got = received_after($n0);
        is($got && $got->{target}, '/base/errdoc400', "[$mpm] a refused request's ErrorDocument is proxied");
        is($got && $got->{hdr}{'max-forwards'}, '4', "[$mpm] ... with Max-Forwards decremented once (5 -> 4)");
        $n0 = n_requests();
        request($HP, "GET /missing/x HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\nConnection: close\r\n\r\n");
        $got = received_after($n0);
        is($got && $got->{target}, '/base/errdoc404', "[$mpm] a 404's ErrorDocument is proxied");
        is($got && $got->{hdr}{'max-forwards'}, '4', "[$mpm] ... with Max-Forwards decremented once (5 -> 4)");
        sleep 0.1;
        is(n_requests(), $n0 + 1, "[$mpm] ... one backend request each");
    }

    # --- dot segments ---------------------------------------------------------
    # [vhost, raw path, expected status, base the backend's path must stay
    # under (default: the mapping's)]; with AllowEncodedSlashes On, httpd
    # normalises again after decoding "%2F", so "/app/..%2Fadmin" becomes
    # "/admin", which that virtual host's "/" mapping proxies, where
    # NoDecode leaves the module a "..%2F" to refuse (400)
    my @dots = (
        [NoDecode => '/app/..;/admin',           400],
        [NoDecode => '/app/..;x=1/admin',        400],
        [NoDecode => '/app/%2e%2e;/admin',       400],
        [NoDecode => '/app/.%2E%3B/admin',       400],
        [NoDecode => '/app/..%2Fadmin',          400],
        [NoDecode => '/app/%2e%2e%2fadmin',      400],
        [NoDecode => '/app/..%5Cadmin',          400],
        [NoDecode => '/app/a/..;/..;/admin',     400],
        [NoDecode => '/loc/..;/admin',           400],
        [NoDecode => '/app/a/..;/b',             200],
        [NoDecode => '/app/a/.;/b',              200],
        [NoDecode => '/app/a/../b',              200],
        [NoDecode => '/app/a%2F..%2Fb',          200],
        [NoDecode => '/app/x;..',                200],
        [On       => '/app/..%2Fadmin',          200, '/base/root/'],
        [On       => '/app/%2e%2e%2fadmin',      200, '/base/root/'],
        [On       => '/app/..;/admin',           400],
        [On       => '/app/a/..%2Fb',            200],
        [On       => '/app/a/b?q=/../..;/',      200],
    );
    for my $d (@dots) {
        my ($vh, $path, $want, $base) = @$d;
        my $n0 = n_requests();
        my $r = request($port{$vh}, "GET $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        like($r && $r->{status}, qr/^(?:$want)$/, "[$mpm] AllowEncodedSlashes $vh, GET $path: $want");
        if ($want eq '200') {
            my $got = received_after($n0);
            $base //= $path =~ m{^/loc/} ? '/lbase/' : '/base/';
            ok($got && under($got->{target}, $base),
               "[$mpm] ... the backend's target " . ($got ? $got->{target} : '(none)') . " resolves under $base");
        }
        else {
            sleep 0.1;
            is(n_requests(), $n0, "[$mpm] ... no backend saw it");
        }
    }
    # every target the backend ever received stays under its mapping's base
    my @outside = grep { !under($_->{target}, '/base/') && !under($_->{target}, '/lbase/') } $be->requests;
    is_deeply([map { $_->{target} } @outside], [], "[$mpm] no backend target resolved outside the mapping's base");

    is_deeply([$h->error_lines], [], "[$mpm] no error in the log");
    $h->stop;
}

# --- max= / ttl= per mapping ----------------------------------------------------
{
    # The backend answers a wave only once every request of the wave has
    # arrived (a barrier in a file), so the requests of a wave surely hold a
    # backend connection each, whatever the machine's load.
    my $bar = tempdir('apx-bar-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $pb = APX::Backend->new(handler => sub {
        my ($req) = @_;
        if ($req->{target} =~ m{/(w\w+)/\d+\?n=(\d+)}) {
            my ($wave, $n) = ($1, $2);
            open my $fh, '>>', "$bar/$wave" or die "$bar/$wave: $!";
            flock $fh, LOCK_EX;
            print $fh "x\n";
            close $fh;
            my $end = time + 20;
            sleep 0.01 while (-s "$bar/$wave" // 0) < 2 * $n && time < $end;
        }
        return APX::Backend::response(200, "ok $req->{target}\n");
    });
    my $PB = '127.0.0.1:' . $pb->port;
    # the main server's mapping is read first, the virtual host's after it:
    # with one shared record, the last max= read (1) was every pool's
    my $h = APX::Httpd->new(mpm => 'event', threads => 10,
        global => "AsyncProxyParkDelay 0\nAsyncProxyPass /same/ http://$PB/b/ max=50 ttl=60s",
        conf => "AsyncProxyPass /fifty/ http://$PB/b/ max=50 ttl=60s\n"
              . "AsyncProxyPass /one/ http://$PB/b/ max=1 ttl=60s\n");
    $h->start;
    my $HP = $h->port;
    my $N = 5;

    # $N concurrent requests, one connection each; returns the backend's
    # requests of that wave
    my $wave = sub {
        my ($prefix, $name) = @_;
        my @s = map { connect_to($HP) } 1 .. $N;
        send_raw($s[$_], "GET /$prefix/$name/$_?n=$N HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") for 0 .. $N - 1;
        my $ok = 0;
        for my $s (@s) {
            my $buf = '';
            my $r = read_response($s, \$buf, timeout => 30);
            $ok++ if $r && $r->{status} == 200;
        }
        is($ok, $N, "wave $name on /$prefix/: $N x 200");
        return grep { $_->{target} =~ m{^/b/\Q$name\E/} } $pb->requests;
    };
    my $conns = sub { my %c = map { $_->{conn_id} => 1 } @_; return \%c };

    my @f1 = $wave->('fifty', 'wf1');
    is(scalar(keys %{ $conns->(@f1) }), $N, "max=50, first wave: $N backend connections");
    my @f2 = $wave->('fifty', 'wf2');
    my @f2_new = grep { !$conns->(@f1)->{ $_->{conn_id} } } @f2;
    is(scalar @f2_new, 0, "max=50, second wave: all $N requests on pooled connections (no new one)");

    my @o1 = $wave->('one', 'wo1');
    my @o1_fresh = grep { !$conns->(@f1, @f2)->{ $_->{conn_id} } } @o1;
    is(scalar @o1_fresh, $N, "max=1: its own pool, the max=50 pool's idle connections are not its");
    my %o1c = %{ $conns->(@o1) };
    my $closed = wait_for(sub {
        my $n = grep { $o1c{ $_->{conn_id} } && ($_->{closed_by} // '') eq 'peer' } $pb->connections;
        $n >= $N - 1 ? $n : 0;
    }, 10);
    is($closed, $N - 1, "max=1: the proxy closed " . ($N - 1) . " of the wave's $N connections, kept 1");
    my @o2 = $wave->('one', 'wo2');
    my @o2_reused = grep { $o1c{ $_->{conn_id} } } @o2;
    is(scalar @o2_reused, 1, "max=1, second wave: exactly 1 request on a pooled connection");

    # equal options share: /same/ (main server, max=50 ttl=60s) takes the
    # idle connections /fifty/ left
    my @s1 = $wave->('same', 'ws1');
    my %fc = %{ $conns->(@f1, @f2) };
    my @s1_reused = grep { $fc{ $_->{conn_id} } } @s1;
    is(scalar @s1_reused, $N, "equal max= and ttl= in another server: the same pool ($N reused)");

    is_deeply([$h->error_lines], [], "no error in the log");
    $h->stop;
}

done_testing;
