package APX::Client;

# Raw HTTP/1.1 client helpers for the integration tests: byte-exact
# requests on IO::Socket::INET, a response reader that knows the framing
# rules of RFC 9112 (no body for HEAD / 1xx / 204 / 304, chunked with
# trailers, Content-Length, read-to-EOF), interim responses collected
# separately, the module's status figures, and slowd's life.
#
#   use APX::Client qw(:all);
#   my $s = connect_to($port);
#   print $s "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
#   my $buf = '';
#   my $r = read_response($s, \$buf);     # {status, headers, hlist, body, ...}
#   my %f = figures($port);               # AsyncProxyXxx => N of /apx-status
#
# Nothing here kills anything by name: slowd is stopped by its pid.

use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(sleep time);
use Digest::MD5 qw(md5_hex);
use Exporter 'import';

our @EXPORT_OK = qw(connect_to read_until read_to_eof read_response http_request
                    figures figure pattern_body start_slowd stop_slowd md5_hex
                    send_raw wait_for ref_mode ref_conf ref_httpd_opts noise);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $PATTERN = join('', 0 .. 9, 'A' .. 'Z', 'a' .. 'z') . "-\n";

# Deterministic bytes that gzip cannot shrink much (a seeded LCG).
sub noise {
    my ($n, $seed) = @_;
    my $x = $seed;
    my $s = '';
    while (length $s < $n) {
        $x = ($x * 1103515245 + 12345) % 2147483648;
        $s .= chr(($x >> 16) & 255);
    }
    return $s;
}

# slowd's body: byte i is PATTERN[i % 64]
sub pattern_body { my ($n) = @_; substr($PATTERN x (int($n / 64) + 1), 0, $n) }

sub connect_to {
    my ($port, $timeout) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                  Timeout => $timeout // 5) or die "connect $port: $!";
    binmode $s;
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    return $s;
}

sub send_raw {
    my ($s, $data) = @_;
    my $off = 0;
    local $SIG{PIPE} = 'IGNORE';
    while ($off < length $data) {
        my $n = syswrite($s, $data, length($data) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# Reads into $$buf until $cond->() is true, EOF or the timeout; returns true
# if the condition held. Sets $$eof (when given) on EOF.
sub read_until {
    my ($s, $buf, $cond, $timeout, $eof) = @_;
    my $deadline = time + ($timeout // 10);
    my $sel = IO::Select->new($s);
    while (!$cond->()) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($s, $$buf, 262144, length $$buf);
        if (!$n) {
            $$eof = 1 if $eof;
            return $cond->() ? 1 : 0;
        }
    }
    return 1;
}

sub read_to_eof {
    my ($s, $timeout) = @_;
    my $buf = '';
    my $eof = 0;
    my $deadline = time + ($timeout // 10);
    my $sel = IO::Select->new($s);
    while ((my $left = $deadline - time) > 0) {
        next unless $sel->can_read($left);
        my $n = sysread($s, $buf, 262144, length $buf);
        if (!$n) { $eof = 1; last }
    }
    return wantarray ? ($buf, $eof) : $buf;
}

# Parses one response off the front of $$buf, reading more as needed.
# Options: head_only => 1 (the request was HEAD: no body whatever the head
# says), timeout => S, keep_interim => 0 (return a 1xx as the response).
# Returns { status, reason, version, headers => {lc => 'v1, v2'},
# hlist => [[name, value], ...], body, chunked, chunks, trailers => [[n, v]],
# interim => [ {status, hlist}, ... ], raw, complete, eof } or undef when no
# head arrived in time. An incomplete body (EOF or timeout first) gives
# complete => 0 and the bytes that did arrive in body.
sub read_response {
    my ($s, $buf, %o) = @_;
    my $timeout = $o{timeout} // 10;
    my @interim;
    my $eof = 0;
    while (1) {
        read_until($s, $buf, sub { $$buf =~ /\r?\n\r?\n/ }, $timeout, \$eof) or return undef;
        $$buf =~ /\r?\n\r?\n/g;
        my $hl = pos($$buf);
        pos($$buf) = undef;
        my $head = substr($$buf, 0, $hl);
        my ($sl, @lines) = split /\r?\n/, $head;
        my ($ver, $status, $reason) = $sl =~ /^(HTTP\/\d\.\d) (\d{3})(?: (.*))?$/;
        $status //= 0;
        my (@hl, %h);
        for (@lines) {
            next unless /^([^:]+):[ \t]*(.*?)[ \t]*$/;
            push @hl, [$1, $2];
            my $k = lc $1;
            $h{$k} = exists $h{$k} ? "$h{$k}, $2" : $2;
        }
        my $r = { status => $status + 0, reason => $reason, version => $ver, headers => \%h,
                  hlist => \@hl, head => $head, chunks => 0, chunked => 0, trailers => [],
                  body => '', complete => 1 };
        if ($status >= 100 && $status < 200 && $status != 101 && !defined $o{keep_interim}) {
            substr($$buf, 0, $hl, '');
            push @interim, $r;
            next;
        }
        $r->{interim} = \@interim;
        my $pos = $hl;
        my $te = $h{'transfer-encoding'} // '';
        if ($o{head_only} || $status == 204 || $status == 304 || ($status >= 100 && $status < 200)) {
        }
        elsif ($te =~ /chunked\s*$/i) {
            $r->{chunked} = 1;
            while (1) {
                if (!read_until($s, $buf, sub { index($$buf, "\n", $pos) >= 0 }, $timeout, \$eof)) {
                    $r->{complete} = 0;
                    last;
                }
                my $e = index($$buf, "\n", $pos);
                my $line = substr($$buf, $pos, $e - $pos);
                $line =~ s/\r$//;
                if ($line !~ /^([0-9a-fA-F]+)/) {
                    $r->{complete} = 0;
                    $r->{bad_chunk} = $line;
                    last;
                }
                my $size = hex $1;
                $pos = $e + 1;
                if (!$size) {
                    # trailer section up to an empty line
                    my $ok = 1;
                    while (1) {
                        if (!read_until($s, $buf, sub { index($$buf, "\n", $pos) >= 0 }, $timeout, \$eof)) {
                            $ok = 0;
                            last;
                        }
                        $e = index($$buf, "\n", $pos);
                        my $t = substr($$buf, $pos, $e - $pos);
                        $pos = $e + 1;
                        $t =~ s/\r$//;
                        last if $t eq '';
                        push @{ $r->{trailers} }, [$1, $2] if $t =~ /^([^:]+):[ \t]*(.*)$/;
                    }
                    $r->{complete} = 0 unless $ok;
                    $r->{last_chunk} = 1;
                    last;
                }
                if (!read_until($s, $buf, sub { length($$buf) >= $pos + $size + 2 }, $timeout, \$eof)) {
                    $r->{body} .= substr($$buf, $pos) if length($$buf) > $pos;
                    $pos = length $$buf;
                    $r->{complete} = 0;
                    last;
                }
                $r->{body} .= substr($$buf, $pos, $size);
                $pos += $size + 2;
                $r->{chunks}++;
            }
        }
        elsif (defined $h{'content-length'}) {
            my $cl = $h{'content-length'};
            if (!read_until($s, $buf, sub { length($$buf) >= $pos + $cl }, $timeout, \$eof)) {
                $r->{complete} = 0;
                $cl = length($$buf) - $pos;
            }
            $r->{body} = substr($$buf, $pos, $cl);
            $pos += $cl;
        }
        else {
            # no framing: the body runs to EOF
            my $rest;
            ($rest, $eof) = read_to_eof($s, $timeout);
            $$buf .= $rest;
            $r->{body} = substr($$buf, $pos);
            $pos = length $$buf;
            $r->{complete} = $eof ? 1 : 0;
        }
        $r->{raw} = substr($$buf, 0, $pos, '');
        $r->{eof} = $eof;
        return $r;
    }
}

# One request on a fresh connection (Connection: close unless given);
# returns the parsed response (or undef).
sub http_request {
    my ($port, $method, $path, %o) = @_;
    my $s = eval { connect_to($port) } or return undef;
    my $hdrs = $o{headers} // [];
    my $req = "$method $path HTTP/1.1\r\n";
    my %have = map { lc($hdrs->[2 * $_]) => 1 } 0 .. @$hdrs / 2 - 1;
    $req .= "Host: 127.0.0.1:$port\r\n" unless $have{host};
    $req .= "Connection: close\r\n" unless $have{connection};
    for (my $i = 0; $i < @$hdrs; $i += 2) {
        $req .= "$hdrs->[$i]: $hdrs->[$i + 1]\r\n";
    }
    $req .= 'Content-Length: ' . length($o{body}) . "\r\n" if defined $o{body} && !$have{'content-length'}
                                                             && !$have{'transfer-encoding'};
    $req .= "\r\n";
    $req .= $o{body} if defined $o{body};
    send_raw($s, $req);
    my $buf = '';
    my $r = read_response($s, \$buf, head_only => $method eq 'HEAD', timeout => $o{timeout} // 15);
    close $s;
    return $r;
}

# The module's figures from /apx-status: (Name => value) with the
# "AsyncProxy" prefix stripped.
sub figures {
    my ($port) = @_;
    my $r = http_request($port, 'GET', '/apx-status');
    return () unless $r && $r->{status} == 200;
    my %f;
    $f{$1} = $2 while $r->{body} =~ /^AsyncProxy(\w+): (\S+)$/mg;
    return %f;
}

sub figure { my ($port, $name) = @_; my %f = figures($port); return $f{$name} }

# Polls $cond every 20 ms for up to $timeout s; returns its last value.
sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    my $v;
    until (($v = $cond->()) || time >= $deadline) {
        sleep 0.02;
    }
    return $v;
}

# slowd on a kernel-chosen port: returns { pid, port, fh }.
sub start_slowd {
    require APX::Httpd;
    my $bin = $ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd';
    die "$bin is not built (make -C bench slowd)\n" unless -x $bin;
    my $pid = open(my $out, '-|', $bin, '-p', '0', '-q') or die "slowd: $!";
    my $line = <$out> // '';
    my ($port) = $line =~ /^slowd listening on 127\.0\.0\.1:(\d+)$/
        or die "slowd did not start: $line";
    return bless { pid => $pid, port => $port, fh => $out, owner => $$ }, 'APX::Client::Slowd';
}

sub stop_slowd {
    my ($sd) = @_;
    return unless $sd && $sd->{pid} && $sd->{owner} == $$;
    kill 'TERM', $sd->{pid};
    close $sd->{fh};    # waits for it
    delete $sd->{pid};
}

# a test that dies still stops its slowd (closing the pipe alone would wait
# for slowd forever)
sub APX::Client::Slowd::DESTROY {
    my ($sd) = @_;
    local ($?, $!, $@);
    stop_slowd($sd);
}

# ---- reference mode -------------------------------------------------------
# APX_REF=mod_proxy runs a test's expectations against httpd's own
# mod_proxy_http instead of this module: the directives are translated
# (AsyncProxyPass -> ProxyPass, ...; module-only ones dropped). It checks the
# tests themselves (a failure there is the test's or mod_proxy's, not ours);
# the module must still load, so point APX_MODULE_SO at a build of it.
sub ref_mode { ($ENV{APX_REF} // '') eq 'mod_proxy' }

sub ref_conf {
    my ($conf) = @_;
    return $conf unless ref_mode();
    my @out;
    for my $l (split /\n/, $conf) {
        if ($l =~ /^(\s*)AsyncProxyPass\s+(.*)$/) {
            my ($ind, $args) = ($1, $2);
            my @a = map { s/^connecttimeout=/connectiontimeout=/ir } grep { !/^parkdelay=/i } split ' ', $args;
            push @out, "${ind}ProxyPass @a";
        }
        elsif ($l =~ s/^(\s*)AsyncProxy(PassReverse|PreserveHost|AddHeaders|Timeout)\b/$1Proxy$2/) {
            push @out, $l;
        }
        elsif ($l =~ /^\s*AsyncProxy/) {
            next;
        }
        else {
            push @out, $l;
        }
    }
    return join("\n", @out) . "\n";
}

# Extra APX::Httpd->new options for reference mode.
sub ref_httpd_opts {
    return () unless ref_mode();
    return (modules => ['proxy', 'proxy_http']);
}

1;
