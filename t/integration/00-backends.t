#!/usr/bin/perl
# The two backends the other tests and the benchmarks stand on, checked on
# their own with raw sockets: slowd (bench/slowd.c: delays, bodies,
# keep-alive, pipelining, chunked) and APX::Backend (scripted answers come
# back byte-exact, the request log is right, backend connections are told
# apart, nothing survives stop() or the death of the test process).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Backend;
use APX::Client qw(pattern_body connect_to read_until read_to_eof read_response);
use POSIX ();
use Time::HiRes qw(sleep time);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path ();

my $TOP = abs_path(dirname(abs_path(__FILE__)) . '/../..');
my $SLOWD = $ENV{APX_SLOWD} || "$TOP/build/bench/slowd";

# ------------------------------------------------------------------ slowd
SKIP: {
    skip "build/bench/slowd is not built (make -C bench slowd)", 22 unless -x $SLOWD;

    my $pid = open(my $out, '-|', $SLOWD, '-p', '0', '-q') or die "slowd: $!";
    my $line = <$out> // '';
    my ($port) = $line =~ /^slowd listening on 127\.0\.0\.1:(\d+)$/;
    ok($port, 'slowd starts on a kernel-chosen port and says so') or diag $line;
    $port ||= 1;

    {
        my $s = connect_to($port);
        my $t0 = time;
        print $s "GET /delay/200/1000 HTTP/1.1\r\nHost: x\r\n\r\n";
        my $buf = '';
        my $r = read_response($s, \$buf);
        my $took = time - $t0;
        is($r && $r->{status}, 200, 'delay: 200');
        cmp_ok($took, '>=', 0.2, 'delay: a 200 ms request takes at least 200 ms');
        cmp_ok($took, '<', 1.5, '... and not much more');
        is($r && $r->{headers}{'content-length'}, 1000, 'delay: Content-Length is BYTES');
        ok($r && $r->{body} eq pattern_body(1000), 'delay: the body is the documented pattern');

        # keep-alive: a second request on the same connection, head sent in pieces
        for my $piece ("GE", "T /delay/0/7 HT", "TP/1.1\r\nHost: x\r", "\n\r\n") {
            print $s $piece;
            $s->flush;
            sleep 0.01;
        }
        $r = read_response($s, \$buf);
        ok($r && $r->{status} == 200 && $r->{body} eq pattern_body(7),
           'keep-alive: a second request, written in pieces, on the same connection');
    }
    {
        # pipelining: the slower first request is still answered first
        my $s = connect_to($port);
        print $s "GET /delay/100/11 HTTP/1.1\r\nHost: x\r\n\r\nGET /delay/0/22 HTTP/1.1\r\nHost: x\r\n\r\n";
        my $buf = '';
        my $r1 = read_response($s, \$buf);
        my $r2 = read_response($s, \$buf);
        is($r1 && length $r1->{body}, 11, 'pipelining: first answer first');
        is($r2 && length $r2->{body}, 22, 'pipelining: then the second');
        is($buf, '', 'pipelining: nothing extra');
    }
    {
        my $s = connect_to($port);
        print $s "GET /delay/0/40000?chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        my $buf = '';
        my $r = read_response($s, \$buf);
        is($r && $r->{headers}{'transfer-encoding'}, 'chunked', 'chunked: Transfer-Encoding: chunked');
        ok(!exists $r->{headers}{'content-length'}, 'chunked: no Content-Length');
        cmp_ok($r && $r->{chunks}, '>=', 2, 'chunked: the body comes in several chunks');
        ok($r && $r->{body} eq pattern_body(40000), 'chunked: de-chunked body is the pattern');

        print $s "HEAD /delay/0/500 HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing HTTP/1.1\r\nHost: x\r\n\r\n";
        $r = read_response($s, \$buf, head_only => 1);
        is($r && $r->{headers}{'content-length'}, 500, 'HEAD: Content-Length of the GET');
        $r = read_response($s, \$buf);
        is($r && $r->{status}, 404, 'HEAD sends no body: the next answer follows at once, a 404');
    }
    {
        my $s = connect_to($port);
        print $s "GET /delay/0/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        my ($all, $eof) = read_to_eof($s);
        ok($eof && $all =~ /\r\n\r\n012\z/, 'Connection: close: answered, then closed');

        $s = connect_to($port);
        print $s "GET /delay/0/3 HTTP/1.0\r\n\r\n";
        ($all, $eof) = read_to_eof($s);
        ok($eof && $all =~ /^HTTP\/1\.1 200/, 'HTTP/1.0 without keep-alive: answered, then closed');

        $s = connect_to($port);
        print $s "GET /delay/0/3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        my $buf = '';
        my $r = read_response($s, \$buf);
        like($r && $r->{headers}{connection}, qr/keep-alive/i, 'HTTP/1.0 keep-alive is announced');

        $s = connect_to($port);
        print $s "POST /delay/0/2 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /delay/0/4 HTTP/1.1\r\n\r\n";
        $buf = '';
        my $r1 = read_response($s, \$buf);
        my $r2 = read_response($s, \$buf);
        ok($r1 && $r2 && length($r1->{body}) == 2 && length($r2->{body}) == 4,
           'a request body (Content-Length) is skipped, the next request is found');
    }

    kill 'TERM', $pid;
    close $out;     # waits for slowd
    is($? & 127, 0, 'slowd exits on SIGTERM without dying of the signal');
    ok(!kill(0, $pid), 'slowd is gone');
}

# ------------------------------------------------------------- APX::Backend
{
    my $raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
            . "garbage\x00\xff after the response";
    my $b = APX::Backend->new(handler => sub {
        my ($req, $conn) = @_;
        return $raw if $req->{target} eq '/raw';
        return [[send => "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"], [sleep => 0.2],
                [send => "\r\nslow"], [close => 1]] if $req->{target} eq '/steps';
        return APX::Backend::response(200, "pid $$ conn $conn->{id} idx $conn->{index}");
    });
    ok($b->port > 0 && $b->port != 9000, 'backend: a kernel-chosen port');

    my $s = connect_to($b->port);
    print $s "GET /raw HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
    my ($got, $eof) = read_to_eof($s);
    is($got, $raw, 'backend: a scripted raw answer comes back byte-exact');
    ok($eof, '... and Connection: close in the request closes the connection');

    $s = connect_to($b->port);
    my $t0 = time;
    print $s "GET /steps HTTP/1.1\r\nHost: b\r\n\r\n";
    ($got, $eof) = read_to_eof($s);
    is($got, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow", 'backend: steps send in order');
    ok($eof && time - $t0 >= 0.2, '... with their sleep, then close');

    # a chunked request with trailers and headers in a given order
    my $req = "POST /up?x=1 HTTP/1.1\r\nHost: b\r\nX-B: 2\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
            . "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    my $kept = connect_to($b->port);     # stays open until stop()
    print $kept $req;
    my $buf = '';
    my $r1 = read_response($kept, \$buf);
    print $kept "GET /second HTTP/1.1\r\nHost: b\r\n\r\n";
    my $r2 = read_response($kept, \$buf);
    ok($r1 && $r2, 'backend: two answers on one keep-alive connection');
    my $pid_conn = ($r2 && $r2->{body} =~ /^pid (\d+)/) ? $1 : 0;

    my $s3 = connect_to($b->port);
    print $s3 "GET /third HTTP/1.1\r\nHost: b\r\n\r\n";
    my $buf3 = "";
    read_response($s3, \$buf3);

    my @reqs = $b->wait_requests(5);
    my ($up) = grep { $_->{target} eq '/up?x=1' } @reqs;
    my ($second) = grep { $_->{target} eq '/second' } @reqs;
    my ($third) = grep { $_->{target} eq '/third' } @reqs;
    is($up && $up->{method}, 'POST', 'log: method');
    is_deeply($up && $up->{headers},
              [['Host', 'b'], ['X-B', '2'], ['Transfer-Encoding', 'chunked'], ['X-A', '1']],
              'log: headers in order, names as sent');
    is($up && $up->{body}, 'hello world', 'log: the chunked body, de-chunked');
    is_deeply($up && $up->{trailers}, [['X-Trailer', 't']], 'log: trailers');
    is($up && $up->{raw}, $req, 'log: raw is the exact bytes received');
    ok($up && $second && $up->{conn_id} == $second->{conn_id} && $second->{index} == 1,
       'log: two requests on one connection share conn_id');
    ok($third && $third->{conn_id} != $second->{conn_id}, 'log: another connection, another conn_id');

    # Expect: 100-continue — the default answer is 100 before the body is read
    $s = connect_to($b->port);
    print $s "PUT /e HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    $buf = '';
    read_until($s, \$buf, sub { $buf =~ /\r\n\r\n/ });
    is($buf, "HTTP/1.1 100 Continue\r\n\r\n", 'expect: 100 Continue before the body');
    print $s "abc";
    $buf = '';
    my $r = read_response($s, \$buf);
    is($r && $r->{status}, 200, 'expect: then the final answer');
    ($r) = grep { $_->{target} eq '/e' } $b->wait_requests(5);
    ok($r && $r->{body} eq 'abc' && $r->{expect}, 'expect: body logged');

    my $lpid = $b->pid;
    ok($pid_conn && kill(0, $pid_conn) && kill(0, $lpid), 'listener and a connection process run')
        or diag explain [$pid_conn, $lpid, $r2];
    $b->stop;
    ok(!kill(0, $lpid), 'stop: no listener left');
    ok(!kill(0, $pid_conn), 'stop: no connection process left (its client is still connected)');
    my @c = $b->connections;
    is(scalar @c, 5, 'connections: five accepted');
}

# responses: the Nth request gets the Nth answer; a close step ends the
# connection, and the log says who closed it.
{
    my $b = APX::Backend->new(responses => [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA",
        [[send => "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB"], [close => 1]],
    ]);
    my $s = connect_to($b->port);
    my $buf = '';
    print $s "GET /1 HTTP/1.1\r\nHost: b\r\n\r\n";
    my $r1 = read_response($s, \$buf);
    print $s "GET /2 HTTP/1.1\r\nHost: b\r\n\r\n";
    my ($rest, $eof) = read_to_eof($s);
    is(($r1 ? $r1->{body} : '') . ($rest =~ /\r\n\r\n(.*)\z/s)[0], 'AB', 'responses: in order on one connection');
    ok($eof, 'responses: [close] closes');
    my ($c) = $b->connections;
    is($c && $c->{closed_by}, 'server', 'connections: closed_by server');
    $b->stop;
}

# A test process that dies without stop() leaves no backend behind.
{
    pipe(my $rd, my $wr) or die;
    my $child = fork // die;
    if (!$child) {
        close $rd;
        my $b = APX::Backend->new;
        my $s = connect_to($b->port);
        print $s "GET / HTTP/1.1\r\nHost: b\r\n\r\n";
        my $buf = "";
        read_response($s, \$buf);
        syswrite $wr, $b->pid . "\n";
        File::Path::remove_tree($b->dir);   # _exit skips File::Temp's cleanup
        POSIX::_exit(0);            # no DESTROY, no stop()
    }
    close $wr;
    my $lpid = <$rd>;
    chomp $lpid if defined $lpid;
    waitpid($child, 0);
    my $deadline = time + 3;
    sleep 0.05 while $lpid && kill(0, $lpid) && time < $deadline;
    ok($lpid && !kill(0, $lpid), 'orphaned backend exits by itself');
    ok($lpid && !kill(0, -$lpid), '... with its connection processes');
}

done_testing();
