#!/usr/bin/perl
# Slow clients never hold a module worker (event MPM). The module runs with
# ONE worker thread (AsyncProxyWorkers 1 1), so a single blocked worker
# would stall every parked request. Meanwhile 50 other requests flow (10
# keep-alive connections x 5 requests to a 200 ms backend: each one is
# parked and needs the worker to be resumed, and the later ones on each
# connection run on the worker as adopted-connection requests). They must
# all complete while the slow client is still in its slow phase:
#   - a slow reader of a 10 MiB response (small SO_RCVBUF, 16 KiB every
#     50 ms), on a fresh connection and on an adopted one; it then reads
#     faster and must get all 10 MiB intact;
#   - Slowloris: after one complete request on a connection, the next
#     request head comes one byte every 200 ms (1 client, then 4 at once);
#   - a slow uploader: a 1 MiB POST body in 16 KiB pieces every 50 ms,
#     which must reach the backend intact.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use IO::Select;
use Time::HiRes qw(sleep time);

plan skip_all => 'build/bench/slowd is not built (make -C bench slowd)'
    unless -x ($ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd');

my $BIG = 10 * 1024 * 1024;
my $UPLOAD = 1024 * 1024;
my $sd = start_slowd();
my $up = APX::Backend->new(handler => sub {
    my ($req) = @_;
    return APX::Backend::response(200, 'got ' . length($req->{body}) . "\n");
});
my $h = APX::Httpd->new(
    mpm => 'event', threads => 10, timeout => 30,
    global => "AsyncProxyWorkers 1 1\n",
    conf => "AsyncProxyPass /s/ http://127.0.0.1:$sd->{port}/\n"
          . "AsyncProxyPass /u/ http://127.0.0.1:" . $up->port . "/\n",
);
$h->start;
is(figures($h->port)->{Workers}, 1, 'the module runs exactly one worker thread');

# 50 requests on 10 keep-alive connections; returns (number answered
# 200 with the whole body, seconds taken).
sub others {
    my @c = map { { reqs => [map { get_req('/s/delay/200/100') } 1 .. 5] } } 1 .. 10;
    my $t0 = time;
    multiplex(port => $h->port, conns => \@c, timeout => 30);
    my $took = time - $t0;
    my $good = 0;
    for my $c (@c) {
        $good += grep { $_->{status} == 200 && $_->{body} eq pattern_body(100) } @{ $c->{resps} };
    }
    return ($good, $took);
}

# A blocking socket with a small receive buffer (set before connect, so the
# window stays small).
sub small_rcvbuf_client {
    my $s = nb_connect($h->port, rcvbuf => 4096);
    IO::Select->new($s)->can_write(5) or die "connect timed out";
    my $fl = fcntl($s, F_GETFL, 0);
    fcntl($s, F_SETFL, $fl & ~O_NONBLOCK);
    return $s;
}

# Is the job's line already there (without waiting)?
sub seen_line { my ($job, $re) = @_; return defined wait_line($job, $re, 0.01) }

sub check_others_while {
    my ($what, $job, $done_re) = @_;
    my ($good, $took) = others();
    is($good, 50, "$what: the 50 other requests all completed meanwhile (${\ sprintf('%.1f', $took)} s)");
    ok(!seen_line($job, $done_re), "$what: ... before the slow client's slow phase ended "
       . "(so the only worker was not held by it)");
}

# ------------------------------------------------------------ slow reader
my $WANT_BIG = pattern_body($BIG);
for my $variant ('fresh', 'adopted') {
    my $job = spawn(sub {
        my $s = small_rcvbuf_client();
        my $buf = '';
        if ($variant eq 'adopted') {
            send_raw($s, get_req('/s/delay/300/10'));
            my $r = read_response($s, \$buf, timeout => 5);
            return 'first request failed' unless $r && $r->{status} == 200;
        }
        send_raw($s, get_req("/s/delay/0/$BIG"));
        # the head, then the body slowly
        while (index($buf, "\r\n\r\n") < 0) {
            my $n = sysread($s, $buf, 16384, length $buf) or return 'no head';
        }
        my $hl = index($buf, "\r\n\r\n") + 4;
        my $head = substr($buf, 0, $hl, '');
        my ($status) = $head =~ m{^HTTP/1\.1 (\d{3})};
        my ($cl) = $head =~ /^Content-Length: (\d+)/mi;
        print "started\n";
        my $t0 = time;
        while (time - $t0 < 4 && length $buf < $BIG) {
            my $n = sysread($s, $buf, 16384, length $buf);
            last if !$n;
            sleep 0.05;
        }
        my $slow_bytes = length $buf;
        print "slowdone $slow_bytes\n";
        my $sel = IO::Select->new($s);
        while (length $buf < $BIG && $sel->can_read(10)) {
            my $n = sysread($s, $buf, 1 << 20, length $buf);
            last if !$n;
        }
        my $intact = $buf eq $WANT_BIG ? 1 : 0;
        return "status=$status cl=" . ($cl // 'none') . " bytes=" . length($buf)
             . " slow=$slow_bytes intact=$intact";
    });
    ok(defined wait_line($job, qr/^started/, 10), "slow reader ($variant): the 10 MiB response started");
    check_others_while("slow reader ($variant)", $job, qr/^slowdone/);
    my @logged = grep { m{"GET /s/delay/0/$BIG } } split /\n/, $h->slurp_log($h->access_log);
    # Not logged yet: the response was still going out, not already
    # swallowed whole by socket buffers (else the test would prove nothing).
    is(scalar @logged, $variant eq 'adopted' ? 1 : 0,
       "slow reader ($variant): meanwhile the 10 MiB response was still in flight on the server");
    my $res = finish($job, 60) // 'timeout';
    like($res, qr/status=200 cl=$BIG bytes=$BIG slow=\d+ intact=1/,
         "slow reader ($variant): all 10 MiB arrived intact ($res)");
    my ($slow) = $res =~ /slow=(\d+)/;
    cmp_ok($slow // $BIG, '<', $BIG / 2, "slow reader ($variant): it really was slow in its slow phase");
}

# --------------------------------------------------------------- Slowloris
for my $n (1, 4) {
    my @jobs = map {
        spawn(sub {
            my $s = connect_to($h->port);
            my $buf = '';
            send_raw($s, get_req('/s/delay/300/10'));
            my $r = read_response($s, \$buf, timeout => 5);
            return 'first request failed' unless $r && $r->{status} == 200;
            print "adopted\n";
            my $head = get_req('/s/delay/0/33');
            my $t0 = time;
            my $i = 0;
            while (time - $t0 < 4 && $i < length($head) - 1) {
                send_raw($s, substr($head, $i++, 1));
                sleep 0.2;
            }
            print "dripdone $i\n";
            send_raw($s, substr($head, $i));
            $r = read_response($s, \$buf, timeout => 10);
            return 'no answer' unless $r;
            return "status=$r->{status} body=" . ($r->{body} eq pattern_body(33) ? 'ok' : 'bad') . " dripped=$i";
        })
    } 1 .. $n;
    my $st0 = figures($h->port);
    my $ready = grep { defined wait_line($_, qr/^adopted/, 10) } @jobs;
    is($ready, $n, "Slowloris x$n: the connections are adopted (one request answered each)");
    sleep 0.5;    # let a few bytes of the next heads arrive
    my ($good, $took) = others();
    is($good, 50, "Slowloris x$n: the 50 other requests all completed meanwhile (${\ sprintf('%.1f', $took)} s)");
    ok(!grep({ seen_line($_, qr/^dripdone/) } @jobs),
       "Slowloris x$n: ... while the slow heads were still dripping");
    my @res = map { finish($_, 20) // 'timeout' } @jobs;
    is(scalar(grep { /^status=200 body=ok dripped=(\d+)/ && $1 >= 15 } @res), $n,
       "Slowloris x$n: each slow head is answered once whole (@res)");
    my $waits = (figures($h->port)->{HeadWaits} // 0) - ($st0->{HeadWaits} // 0);
    cmp_ok($waits, '>=', 10 * $n, "Slowloris x$n: the partial heads were parked, not read on a thread (HeadWaits +$waits)");
}

# ----------------------------------------------------------- slow uploader
{
    my $body = pattern_body($UPLOAD);
    my $job = spawn(sub {
        my $s = connect_to($h->port);
        send_raw($s, "POST /u/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                   . "Content-Length: $UPLOAD\r\n\r\n");
        send_raw($s, substr($body, 0, 16384));
        print "started\n";
        for (my $off = 16384; $off < $UPLOAD; $off += 16384) {
            sleep 0.05;
            send_raw($s, substr($body, $off, 16384)) or return 'send failed';
        }
        print "sentall\n";
        my $buf = '';
        my $r = read_response($s, \$buf, timeout => 10);
        return $r ? "status=$r->{status} body=$r->{body}" : 'no answer';
    });
    ok(defined wait_line($job, qr/^started/, 10), 'slow upload: started');
    sleep 0.3;
    check_others_while('slow upload', $job, qr/^sentall/);
    my $res = finish($job, 30) // 'timeout';
    like($res, qr/^status=200 body=got $UPLOAD\s*$/, "slow upload: answered 200 by the backend ($res)");
    my @reqs = grep { $_->{method} eq 'POST' } $up->requests;
    is(scalar @reqs, 1, 'slow upload: one POST reached the backend');
    ok(@reqs && $reqs[0]{body} eq $body, 'slow upload: the 1 MiB body arrived intact');
}

my $st = figures($h->port);
is($st->{Workers}, 1, 'still one worker thread');
ok(wait_for(sub { $st = figures($h->port); ($st->{ParkedNow} // -1) == 0 && ($st->{AdoptedNow} // -1) == 0 }, 8),
   'nothing left parked or adopted') or diag explain $st;
ok($h->stop, 'server stops');
$up->stop;
stop_slowd($sd);
is_deeply([$h->error_lines], [], 'no error-log line at level error or above');
done_testing;
