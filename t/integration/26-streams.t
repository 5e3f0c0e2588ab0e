#!/usr/bin/perl
# Streams (issue 14 A): responses without a length — SSE, chunked long
# polls, bodies up to the backend's close — reach the client as each
# backend read arrives, also through mod_deflate and mod_ssl; their silence
# is bounded by streamtimeout= (not by timeout=, which still bounds the
# head, nor by Timeout); a client that leaves a quiet stream has its backend
# connection closed at once; a client that does not read holds no worker.
#
# The SSE backend below logs when it sent each event and when it saw its
# connection end (EOF); the assertions compare what the client received and
# when against that log, with bounds generous for a busy machine.
#
# Checked to fail without the change (git stash of the C part): events
# through mod_deflate and mod_ssl arrive only at the end of the stream
# (deflate/TLS event bounds), the quiet stream is cut after Timeout (idle
# survives), the figures are missing.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use Compress::Raw::Zlib;
use IO::Select;
use File::Temp ();
use Fcntl qw(O_WRONLY O_APPEND O_CREAT);
use Time::HiRes qw(sleep time);

my $have_ssl = eval { require IO::Socket::SSL; 1 };
my $BOUND = 1.5;        # seconds from "sent" to "seen": generous

# the backend's event log (set before the backend forks)
my $EV = File::Temp::tempdir("apx-sse-XXXXXX", TMPDIR => 1, CLEANUP => !$ENV{APX_KEEP}) . "/events";
sub blog {
    my ($line) = @_;
    sysopen(my $fh, $EV, O_WRONLY | O_APPEND | O_CREAT) or return;
    syswrite($fh, sprintf("%s %.6f\n", $line, time));
    close $fh;
}

# Waits (up to $secs) for the peer to close; logs "eof ID" when it did.
sub await_eof {
    my ($sock, $id, $secs) = @_;
    my (undef, $closed) = read_to_eof($sock, $secs);
    blog(($closed ? 'eof' : 'no-eof') . " $id");
    return $closed;
}

# /sse/ID?n=N&gap=G[&quiet=Q][&wait=W][&close=1][&big=BYTES]
#   N events G s apart (after the first, a pause of Q s), chunked, or
#   delimited by the close (close=1); then the end, or (wait=W) no end: the
#   backend waits up to W s for the proxy to close and logs it.
# /plain: an ordinary response with a length.
my $b = APX::Backend->new(handler => sub {
    my ($req, $conn) = @_;
    my ($path, $q) = split /\?/, $req->{target}, 2;
    return APX::Backend::response(200, "plain\n") if $path eq '/plain';
    return [[sleep => 3], [send => APX::Backend::response(200, "late\n")]] if $path eq '/late';
    my ($id) = $path =~ m{^/sse/(\w+)} or return APX::Backend::response(404, "no\n");
    my %a = map { split /=/, $_, 2 } split /&/, $q // '';
    my $sock = $conn->{sock};
    my $chunked = !$a{close};
    my $frame = sub { my ($d) = @_; $chunked ? sprintf("%x\r\n%s\r\n", length $d, $d) : $d };
    send_raw($sock, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
             . "Cache-Control: no-cache\r\n"
             . ($chunked ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n") . "\r\n");
    if ($a{big}) {
        # as fast as the proxy takes it; logs how far it got
        my $sent = 0;
        my $ev = 'data: ' . ('x' x 16000) . "\n\n";
        while ($sent < $a{big}) {
            last unless send_raw($sock, $frame->($ev));
            $sent += length $ev;
            if ($sent % (length($ev) * 32) < length $ev) { blog("big $id $sent") }
        }
        blog(($sent >= $a{big} ? "big-done" : "big-cut") . " $id $sent");
        send_raw($sock, "0\r\n\r\n") if $chunked;
        return [[close => 1]];
    }
    for my $i (1 .. ($a{n} // 3)) {
        my $pause = $i == 2 && $a{quiet} ? $a{quiet} : $i > 1 ? ($a{gap} // 0.3) : 0;
        sleep $pause if $pause;
        # a comment line pads the event, as SSE servers' keep-alives do
        last unless send_raw($sock, $frame->(": pad\ndata: event $i\n\n"));
        blog("sent $id $i");
    }
    if ($a{wait}) {
        await_eof($sock, $id, $a{wait});
        return [[close => 1]];
    }
    send_raw($sock, "0\r\n\r\n") if $chunked;
    return [[close => 1]];
});
my $bport = $b->port;

sub backend_log {
    open my $fh, '<', $EV or return ();
    return map { chomp; [split / /] } <$fh>;
}
sub sent_at { my ($id, $i) = @_; my ($l) = grep { $_->[0] eq 'sent' && $_->[1] eq $id && $_->[2] == $i } backend_log(); return $l ? $l->[3] : undef }
sub eof_at  { my ($id) = @_; my ($l) = grep { $_->[0] eq 'eof' && $_->[1] eq $id } backend_log(); return $l ? $l->[2] : undef }

# Reads one streamed response from $s: de-chunks (and inflates when the
# response is gzip-coded) as bytes arrive; records when "event N" was first
# seen. Stops after $secs, at the end of the body, or when $stop_after
# events were seen. Returns { status, headers, seen => {N => time},
# complete => the terminal chunk arrived, eof => the connection ended }.
sub read_stream {
    my ($s, $secs, $stop_after) = @_;
    my %r = (seen => {}, complete => 0, eof => 0);
    my ($raw, $text, $head_done, $chunk_left, $inflate) = ('', '', 0, undef, undef);
    my $chunked = 0;
    my $end = time + $secs;
    while ((my $left = $end - time) > 0) {
        last if $stop_after && keys %{ $r{seen} } >= $stop_after;
        last if $r{complete};
        next unless can_read($s, $left);
        my $n = sysread($s, my $got, 65536);
        next if !defined $n && ($!{EAGAIN} || $!{EINTR});
        if (!$n) { $r{eof} = 1; last }
        my $now = time;
        $raw .= $got;
        if (!$head_done) {
            my $at = index($raw, "\r\n\r\n");
            next if $at < 0;
            my $head = substr($raw, 0, $at);
            $raw = substr($raw, $at + 4);
            ($r{status}) = $head =~ m{^HTTP/1\.\d (\d{3})};
            $r{headers} = { map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () } split /\r\n/, $head };
            $chunked = ($r{headers}{'transfer-encoding'} // '') =~ /chunked/i;
            $inflate = Compress::Raw::Zlib::Inflate->new(-WindowBits => WANT_GZIP)
                if ($r{headers}{'content-encoding'} // '') =~ /gzip/i;
            $head_done = 1;
        }
        my $body = '';
        if ($chunked) {
            while (1) {
                if (!defined $chunk_left) {
                    last unless $raw =~ /^([0-9a-fA-F]+)[^\r\n]*\r\n/;
                    $chunk_left = hex $1;
                    $raw = substr($raw, length $&);
                    if ($chunk_left == 0) { $r{complete} = 1; last }
                }
                my $take = length($raw) < $chunk_left ? length($raw) : $chunk_left;
                $body .= substr($raw, 0, $take, '');
                $chunk_left -= $take;
                last if $chunk_left;
                last if length($raw) < 2;
                $raw = substr($raw, 2);
                undef $chunk_left;
            }
        }
        else {
            $body = $raw;
            $raw = '';
        }
        if ($inflate && length $body) {
            my $out;
            my $st = $inflate->inflate($body, $out);
            $body = $out // '';
        }
        $text .= $body;
        while ($text =~ /event (\d+)\n/g) { $r{seen}{$1} //= $now }
    }
    $r{text} = $text;
    return \%r;
}

sub open_plain { my ($h) = @_; return connect_to($h->port) }
sub open_tls { my ($h) = @_; return connect_tls($h->port) }

# Events of stream $id all arrived, each within $BOUND of being sent.
sub events_timely {
    my ($r, $id, $n, $what) = @_;
    is(scalar(keys %{ $r->{seen} }), $n, "$what: all $n events arrived");
    my @late;
    for my $i (1 .. $n) {
        my $sent = sent_at($id, $i);
        my $seen = $r->{seen}{$i};
        push @late, "$i: " . (defined $sent && defined $seen ? sprintf('%.2fs', $seen - $sent) : 'missing')
            unless defined $sent && defined $seen && $seen - $sent < $BOUND;
    }
    is("@late", '', "$what: each event seen within ${BOUND}s of the backend sending it");
}

my $MAPS = "AsyncProxyPass /b/ http://127.0.0.1:$bport/ timeout=1\n"
         . "AsyncProxyPass /st/ http://127.0.0.1:$bport/ timeout=1 streamtimeout=1500ms\n"
         . "<Location /z/>\n    AsyncProxyPass http://127.0.0.1:$bport/\n"
         . "    AddOutputFilterByType DEFLATE text/event-stream\n</Location>\n";

# ------------------------------------------------------------- plain HTTP
my $h = APX::Httpd->new(mpm => 'event', threads => 10, timeout => 2,
                        modules => ['deflate', 'filter'],
                        global => "AsyncProxyWorkers 2 2\n", conf => $MAPS);
$h->start;
my $st0 = figures($h->port);
ok(defined $st0->{StreamsTotal}, 'figures StreamsNow/StreamsTotal/StreamBytes exist');

{
    my $s = open_plain($h);
    print $s get_req('/b/sse/p1?n=5&gap=0.4');
    my $r = read_stream($s, 15);
    is($r->{status}, 200, 'SSE over HTTP: 200');
    like($r->{headers}{'content-type'} // '', qr{text/event-stream}, 'SSE: content type kept');
    events_timely($r, 'p1', 5, 'SSE over HTTP');
    ok($r->{complete}, 'SSE over HTTP: the stream ends with its terminal chunk');
    close $s;
}
{
    # delimited by the backend's close: to an HTTP/1.1 client httpd chunks it
    my $s = open_plain($h);
    print $s get_req('/b/sse/c1?n=4&gap=0.4&close=1');
    my $r = read_stream($s, 15);
    is($r->{status}, 200, 'close-delimited stream: 200');
    events_timely($r, 'c1', 4, 'close-delimited stream');
    ok($r->{complete}, 'close-delimited stream: ends cleanly at the backend close');
    close $s;
}
{
    my $s = open_plain($h);
    print $s get_req('/z/sse/d1?n=5&gap=0.4', 'Accept-Encoding' => 'gzip');
    my $r = read_stream($s, 15);
    is($r->{status}, 200, 'SSE through mod_deflate: 200');
    is($r->{headers}{'content-encoding'}, 'gzip', 'SSE through mod_deflate: gzip-coded');
    events_timely($r, 'd1', 5, 'SSE through mod_deflate');
    ok($r->{complete}, 'SSE through mod_deflate: complete');
    close $s;
}

# Idle: a stream quiet for 4 s, twice the server's Timeout (2 s) and four
# times the mapping's timeout= (1 s), is not a failure.
{
    my $s = open_plain($h);
    print $s get_req('/b/sse/q1?n=3&gap=0.2&quiet=4');
    my $r = read_stream($s, 20);
    is($r->{status}, 200, 'quiet stream: 200');
    is(scalar(keys %{ $r->{seen} }), 3, 'quiet stream (4 s, Timeout 2 s, timeout=1): every event arrived');
    ok($r->{complete} && !$r->{eof}, 'quiet stream: ended by the backend, not cut');
    close $s;
    my $plain = request($h->port, get_req('/b/plain'), timeout => 10);
    is($plain && $plain->{status}, 200, 'ordinary response after the quiet stream');
}
# The head still waits at most timeout= (1 s): a backend answering after 3 s.
{
    my $t0 = time;
    my $r = request($h->port, get_req('/b/late'), timeout => 15);
    is($r && $r->{status}, 504, 'head later than timeout=: 504');
    ok(time - $t0 < 2.8, 'head wait bounded by timeout=, not by streamtimeout=');
}
# streamtimeout= bounds the silence: 1.5 s allowed, 4 s quiet -> cut, and
# the backend sees its connection end.
{
    my $s = open_plain($h);
    print $s get_req('/st/sse/t1?n=2&quiet=4&wait=10');
    my $r = read_stream($s, 12);
    is(scalar(keys %{ $r->{seen} }), 1, 'streamtimeout=1500ms: the first event arrived');
    ok(!$r->{complete}, 'streamtimeout=1500ms: the stream was cut (no terminal chunk: not a whole body)');
    ok(wait_for(sub { defined eof_at('t1') || grep { $_->[0] eq 'sent' && $_->[1] eq 't1' && $_->[2] == 2 } backend_log() }, 8),
       'streamtimeout: the backend connection was closed (or its late event found no reader)');
    close $s;
}

# Client abort while the stream is quiet: the backend sees EOF promptly.
{
    my $s = open_plain($h);
    print $s get_req('/b/sse/a1?n=1&wait=20');
    my $r = read_stream($s, 10, 1);
    is(scalar(keys %{ $r->{seen} }), 1, 'abort: first event arrived');
    ok(wait_for(sub { (figures($h->port)->{StreamsNow} // 0) >= 1 }, 5), 'abort: StreamsNow counts the open stream');
    my $closed = time;
    close $s;
    ok(wait_for(sub { defined eof_at('a1') }, 5), 'abort: the backend saw EOF');
    my $eof = eof_at('a1');
    ok(defined $eof && $eof - $closed < 3, 'abort: within 3 s of the client closing (' . (defined $eof ? sprintf('%.2fs', $eof - $closed) : 'never') . ')');
    ok(wait_for(sub { (figures($h->port)->{StreamsNow} // -1) == 0 }, 5), 'abort: StreamsNow back to 0');
}

my $f = figures($h->port);
ok(($f->{StreamsTotal} // 0) - ($st0->{StreamsTotal} // 0) >= 6, 'StreamsTotal counted the streams');
my @bad = grep { !/APX00106/ } $h->error_lines;
is("@bad", '', 'no unexpected errors in the log (the timeouts are expected)');
$h->stop;

# Hostile: six clients that read fast 64 MiB streams slowly (4 KiB every
# 0.5 s each, inside Timeout). The FLUSH after every backend read must not
# make the core block a module worker (there are 2): ordinary requests and
# a stream of another client go on meanwhile (Timeout 30 here: a reader
# this slow is inside it); the backends' sends are throttled by the readers, and the child's memory does not grow with them.
sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ }
    return 0;
}
my $hh = APX::Httpd->new(mpm => 'event', threads => 10, timeout => 30,
                         modules => ['deflate', 'filter'],
                         global => "AsyncProxyWorkers 2 2\n", conf => $MAPS);
$hh->start;
{
    my ($child) = $hh->children;
    my $rss0 = rss_kb($child);
    my $job = spawn(sub {
        my @slow;
        for my $k (1 .. 6) {
            my $s = open_plain($hh);
            setsockopt($s, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 4096);
            print $s get_req("/b/sse/h$k?big=67108864");
            push @slow, $s;
        }
        print "ready\n";
        my $got = 0;
        my $end = time + 11;
        while (time < $end) {
            for my $s (@slow) {
                next unless IO::Select->new($s)->can_read(0);
                my $n = sysread($s, my $buf, 4096);
                $got += $n if $n;
            }
            sleep 0.5;
        }
        close $_ for @slow;
        return "read=$got";
    });
    ok(wait_line($job, qr/^ready/, 10), 'slow readers connected');
    ok(wait_for(sub { my %k = map { $_->[1] => 1 } grep { $_->[0] eq 'big' } backend_log(); keys(%k) >= 6 }, 10),
       'slow readers: the six backends started sending');
    sleep 2;
    my @plain = map { request($hh->port, get_req('/b/plain'), timeout => 5) } 1 .. 5;
    is(scalar(grep { $_ && $_->{status} == 200 } @plain), 5, 'slow readers: ordinary requests answered alongside (2 workers)');
    my $s = open_plain($hh);
    print $s get_req('/b/sse/n1?n=3&gap=0.3');
    my $r = read_stream($s, 10);
    events_timely($r, 'n1', 3, 'slow readers: another stream alongside');
    close $s;
    my $f = figures($hh->port);
    is($f->{StreamsNow}, 6, 'slow readers: their six streams are open (StreamsNow)');
    ok(($f->{StreamBytes} // 0) > 0, 'StreamBytes counts');
    my $most = sub {
        my %max;
        for (backend_log()) { $max{$_->[1]} = $_->[2] if $_->[0] eq 'big' && $_->[2] > ($max{$_->[1]} // 0) }
        my $m = 0;
        $m = $_ > $m ? $_ : $m for values %max;
        return $m;
    };
    my $m1 = $most->();
    sleep 2;
    my $m2 = $most->();
    is(scalar(grep { $_->[0] eq 'big-done' } backend_log()), 0, 'slow readers: no backend got its 64 MiB out');
    # what a backend sent sits in kernel socket buffers (client send,
    # proxy receive) and was read by the client: bounded by those
    ok($m2 < 48 * 1048576, "slow readers: the most a backend sent in ~7 s is $m2 bytes (< 48 MiB)");
    ok($m2 - $m1 < 4 * 1048576, 'slow readers: throttled: ' . ($m2 - $m1) . ' bytes more in the last 2 s (< 4 MiB; the readers take 16 KiB/s)');
    my $grow = rss_kb($child) - $rss0;
    ok($grow < 16384, "slow readers: the child's RSS grew by $grow KiB (< 16 MiB for 6 x 64 MiB streams)");
    my $res = finish($job, 20) // '';
    like($res, qr/^read=\d+/, "slow readers done ($res)");
    ok(wait_for(sub { (figures($hh->port)->{StreamsNow} // -1) == 0 }, 10), 'slow readers gone: StreamsNow 0');
}
is(join(' ', $hh->error_lines), '', 'slow readers: no errors in the log');
$hh->stop;

# ------------------------------------------------------------------ TLS
SKIP: {
    skip 'IO::Socket::SSL is not installed', 9 unless $have_ssl;
    my $t = APX::Httpd->new(mpm => 'event', threads => 10, timeout => 2, tls => 1,
                            modules => ['deflate', 'filter'],
                            global => "AsyncProxyWorkers 2 2\n", conf => $MAPS);
    $t->start;
    {
        my $s = open_tls($t);
        print $s get_req('/b/sse/s1?n=5&gap=0.4');
        my $r = read_stream($s, 15);
        is($r->{status}, 200, 'SSE over TLS: 200');
        events_timely($r, 's1', 5, 'SSE over TLS');
        ok($r->{complete}, 'SSE over TLS: complete');
        close $s;
    }
    {
        my $s = open_tls($t);
        print $s get_req('/z/sse/s2?n=4&gap=0.4&quiet=3', 'Accept-Encoding' => 'gzip');
        my $r = read_stream($s, 15);
        is($r->{headers}{'content-encoding'}, 'gzip', 'SSE over TLS + mod_deflate: gzip-coded');
        events_timely($r, 's2', 4, 'SSE over TLS + mod_deflate, quiet 3 s');
        close $s;
    }
    {
        my $s = open_tls($t);
        print $s get_req('/b/sse/s3?n=1&wait=20');
        my $r = read_stream($s, 10, 1);
        my $closed = time;
        close $s;
        ok(wait_for(sub { defined eof_at('s3') }, 5), 'TLS abort: the backend saw EOF');
        my $eof = eof_at('s3');
        ok(defined $eof && $eof - $closed < 3, 'TLS abort: promptly');
    }
    $t->stop;
}

$b->stop;
done_testing();
