#!/usr/bin/perl
# Active health checks (issue 13, item 3): AsyncProxyHealthCheck in a
# balancer section; probes parked on the poller, one prober per member per
# interval across children (a lease in shared memory), the verdict followed
# by every child, slow start when a member comes back.
# One server, event MPM, TWO children. Asserted on what the backends saw
# (their request logs: probes, requests per member) and on the status page
# of both children:
#   - one prober: a healthy member's backend sees about one probe per
#     interval, not one per child;
#   - 4 members under steady GET load, one backend killed: every GET
#     answered 200 (retries), the member marked down by the checks in both
#     children;
#   - the backend restarted on the same port: the member comes back after
#     passes= checks, with a reduced share at first (slow start) and its
#     full share once the window passed;
#   - expect= mismatch (a 500 /healthz) marks its member down; a /healthz
#     that never answers marks its member down by timeout while the status
#     page keeps answering;
#   - a member ejected by its failing requests comes back early, on
#     probation, when its check passes;
#   - https:// and unix: members are probed too (TLS on the member's
#     settings: a certificate its CA did not sign fails the check);
#   - configtest names the directive and the value of bad settings;
#   - under the worker MPM (no engine) no probe is sent, and the log says so.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::BackendTLS;
use APX::Client qw(:all);
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);

my $t_start = time;
my $d = tempdir('apx-hc-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{APX_KEEP});
chmod 0755, $d;     # the children (another user) reach the Unix socket
# Probes go to Perl backends that fork a process per connection, on a box
# other tests load too: timeouts are generous (a check that times out
# counts as a failure, and enough of them take healthy members out).
my $INTERVAL = 1;

sub handler_for {
    my ($name, $healthz) = @_;
    return sub {
        my ($req) = @_;
        return $healthz->($req) if $req->{target} eq '/healthz' && $healthz;
        return APX::Backend::response(200, "ok\n") if $req->{target} eq '/healthz';
        return APX::Backend::response(200, "$name $req->{target}\n");
    };
}
sub member_backend {
    my ($name, %o) = @_;
    return APX::Backend->new(idle_timeout => 60, %o, handler => handler_for($name));
}

my %be = map { $_ => member_backend($_) } qw(A B C D);
my $d_port = $be{D}->port;
# the odd ones: a 500 health answer, a health answer that never comes
$be{E} = APX::Backend->new(idle_timeout => 60, handler => handler_for('E', sub { APX::Backend::response(500, "sick\n") }));
$be{F} = APX::Backend->new(idle_timeout => 60, handler => handler_for('F', sub { [[sleep => 4], [close => 1]] }));
$be{G} = member_backend('G');
# requests fail (503), its health answer is fine: ejected by its requests,
# back early by its checks
$be{H} = APX::Backend->new(idle_timeout => 60, handler => sub {
    $_[0]{target} eq '/healthz' ? APX::Backend::response(200, "ok\n") : APX::Backend::response(503, "busy\n") });
# TLS and Unix members
my $c = APX::BackendTLS::make_certs($d);
$be{T} = APX::BackendTLS->new(cert => $c->{cert}, key => $c->{key}, idle_timeout => 60, handler => handler_for('T'));
$be{S} = APX::BackendTLS->new(cert => $c->{self_cert}, key => $c->{self_key}, idle_timeout => 60, handler => handler_for('S'));
my $sock = "$d/app.sock";
$be{U} = APX::BackendUnix->new(path => $sock, idle_timeout => 60, handler => handler_for('U'));

my $h = APX::Httpd->new(
    mpm => 'event', threads => 16, servers => 2, server_limit => 2,
    conf => <<"EOF",
AsyncProxyPass /b/ balancer://pool/b/
AsyncProxyPass /o/ balancer://odd/o/
AsyncProxyPass /m/ balancer://mix/m/
AsyncProxyPass /f/ balancer://flaky/f/
<AsyncProxyBalancer pool>
    AsyncProxyMember http://127.0.0.1:@{[ $be{A}->port ]}
    AsyncProxyMember http://127.0.0.1:@{[ $be{B}->port ]}
    AsyncProxyMember http://127.0.0.1:@{[ $be{C}->port ]}
    AsyncProxyMember http://127.0.0.1:$d_port
    AsyncProxyHealthCheck GET /healthz interval=1s timeout=1s passes=2 fails=3 expect=200-399
    AsyncProxyBalancerSet lbmethod=wrr slowstart=15s failures=3 retrybudget=50%
</AsyncProxyBalancer>
<AsyncProxyBalancer odd>
    AsyncProxyMember http://127.0.0.1:@{[ $be{E}->port ]}
    AsyncProxyMember http://127.0.0.1:@{[ $be{F}->port ]}
    AsyncProxyMember http://127.0.0.1:@{[ $be{G}->port ]}
    AsyncProxyHealthCheck HEAD /healthz interval=1s timeout=700ms passes=1 fails=2 expect=200 host=health.local
</AsyncProxyBalancer>
<AsyncProxyBalancer flaky>
    AsyncProxyMember http://127.0.0.1:@{[ $be{H}->port ]}
    AsyncProxyMember http://127.0.0.1:@{[ $be{G}->port ]}
    AsyncProxyHealthCheck GET /healthz interval=1s
    AsyncProxyBalancerSet lbmethod=wrr failures=2 ejecttime=60s maxeject=50%
</AsyncProxyBalancer>
<AsyncProxyBalancer mix>
    AsyncProxyMember https://127.0.0.1:@{[ $be{T}->port ]} tlsca=$c->{ca}
    AsyncProxyMember https://127.0.0.1:@{[ $be{S}->port ]} tlsca=$c->{ca}
    AsyncProxyMember unix:$sock|http://member.local
    AsyncProxyHealthCheck GET /healthz interval=1s fails=2
</AsyncProxyBalancer>
EOF
);
$h->start;
is(scalar(my @k = $h->children), 2, 'two children run');

# Every AsyncProxyMember line of one status page: [{key => value}].
sub status_lines {
    my $r = http_request($h->port, 'GET', '/apx-status', timeout => 10);
    return () unless $r && $r->{status} == 200;
    return map { /^AsyncProxyMember: (.*)$/ ? { map { split /=/, $_, 2 } split ' ', $1 } : () } split /\n/, $r->{body};
}
# Member idx of balancer bal as each child shows it: {pid => line}; asks
# until both children answered (or 200 tries).
sub by_child {
    my ($bal, $idx) = @_;
    my %seen;
    for (1 .. 200) {
        for my $m (status_lines()) {
            $seen{ $m->{child} } = $m if $m->{balancer} eq $bal && $m->{index} == $idx;
        }
        last if keys %seen >= 2;
    }
    return \%seen;
}
# Waits until cond($line) holds for member idx in every child (both seen).
sub wait_all {
    my ($bal, $idx, $cond, $secs) = @_;
    my $until = time + $secs;
    while (time < $until) {
        my $v = by_child($bal, $idx);
        return $v if keys %$v >= 2 && !grep { !$cond->($_) } values %$v;
        sleep 0.1;
    }
    return undef;
}
sub served {
    my ($name) = @_;
    return scalar grep { $_->{target} =~ m{^/[bom]/} } $be{$name}->requests;
}
sub probes_of { my ($name) = @_; grep { $_->{target} eq '/healthz' } $be{$name}->requests }

# ---- checks run, shared ---------------------------------------------------
ok(wait_all('pool', $_, sub { $_[0]{check} eq 'up' && $_[0]{checks_passed} >= 3 }, 15),
   "pool member $_: check=up with passes, in both children") for 0 .. 3;
{
    my @p = probes_of('A');
    is($p[0]{method}, 'GET', 'a probe is the configured method');
    like($p[0]{hdr}{host} // '', qr/^127\.0\.0\.1:\d+$/, "... with the member's Host");
    is(lc($p[0]{hdr}{connection} // ''), 'close', '... and Connection: close');

    # one prober: over a quiet stretch, about one probe per interval
    sleep 5;
    my @t = map { $_->{time} } probes_of('A');
    my $t1 = $t[-1];
    @t = grep { $_ >= $t1 - 5 } @t;
    my $span = $t[-1] - $t[0];
    my $slots = $span / $INTERVAL;
    diag(sprintf "probes at A over %.2f s: %d (%.1f intervals of %.1f s)", $span, scalar(@t), $slots, $INTERVAL);
    cmp_ok(scalar(@t) - 1, '<=', $slots * 1.2 + 1, 'one prober for two children: at most one probe per interval');
    cmp_ok(scalar(@t), '>=', 4, '... and probes do run');
    my %by = map { $_->{hdr}{'user-agent'} // '' => 1 } probes_of('A');
    ok($by{'mod_asyncproxy-check'}, '... marked as checks (User-Agent)');
}

# ---- a member killed under load --------------------------------------------
{
    # few connections, many requests each: the backends fork a process per
    # connection, and a fork storm would starve the probes
    my @conns = map { my $i = $_; { reqs => [map { get_req("/b/L$i-$_") } 1 .. 150] } } 1 .. 10;
    my ($killed_at, $down_at, $ticks) = (undef, undef, 0);
    my $ok = multiplex(port => $h->port, conns => \@conns, timeout => 120, tick_every => 0.2, tick => sub {
        $ticks++;
        if ($ticks == 2) {
            $be{D}->stop;
            $killed_at = time;
        } elsif ($killed_at && !$down_at) {
            my ($m) = grep { $_->{balancer} eq 'pool' && $_->{index} == 3 } status_lines();
            $down_at = time if $m && $m->{check} eq 'down';
        }
    });
    ok($killed_at, 'the backend of member 3 was killed during the load');
    is($ok, scalar(@conns), 'every connection got all its answers') or do {
        my %err;
        $err{ $_->{error} // 'short' }++ for grep { $_->{error} || @{ $_->{resps} } != @{ $_->{reqs} } } @conns;
        diag explain \%err;
    };
    my @bad = grep { $_->{status} != 200 } map { @{ $_->{resps} } } @conns;
    is(scalar(@bad), 0, '... all 200: zero client errors for the idempotent GETs (' . scalar(map { @{ $_->{resps} } } @conns) . ' answers)')
        or diag explain [map { $_->{status} } @bad[0 .. ($#bad < 5 ? $#bad : 5)]];
    my $v = wait_all('pool', 3, sub { $_[0]{check} eq 'down' && $_[0]{state} =~ /^(?:down|checking)$/ }, 10);
    ok($v, 'member 3 is down by the checks in both children (check=down, state down)')
        or diag explain by_child('pool', 3);
    $down_at //= time;
    diag(sprintf "check=down seen %.2f s after the kill", $down_at - $killed_at) if $killed_at;
    cmp_ok($down_at - $killed_at, '<', 15, '... soon after the kill (fails=3 x 1 s; bound generous for a busy machine)') if $killed_at;
    my ($any) = values %{ $v || {} };
    is($any && $any->{check_error}, 'connect', '... the last check failed to connect') if $any;
}

# ---- back after passes=, slow start ---------------------------------------
{
    my $before = served('D');
    $be{D} = APX::Backend->new(port => $d_port, idle_timeout => 60, handler => handler_for('D'));
    ok(wait_all('pool', 3, sub { $_[0]{check} eq 'up' }, 15), 'restarted on its port: member 3 is up again in both children');
    my %c0 = map { $_ => served($_) } qw(A B C D);
    my @conns = map { my $i = $_; { reqs => [map { get_req("/b/S$i-$_") } 1 .. 50] } } 1 .. 4;
    is(multiplex(port => $h->port, conns => \@conns, timeout => 60), 4, 'first window: 200 GETs answered');
    my %c1 = map { $_ => served($_) - $c0{$_} } qw(A B C D);
    my $tot1 = 0; $tot1 += $_ for values %c1;
    my $share1 = $tot1 ? $c1{D} / $tot1 : 1;
    my $w = wait_all('pool', 3, sub { $_[0]{weight_now} == 1024 && $_[0]{state} eq 'up' }, 30);
    ok($w, 'after the slow-start window member 3 has its full weight in both children');
    my %c2 = map { $_ => served($_) } qw(A B C D);
    @conns = map { my $i = $_; { reqs => [map { get_req("/b/F$i-$_") } 1 .. 100] } } 1 .. 4;
    is(multiplex(port => $h->port, conns => \@conns, timeout => 60), 4, 'later: 400 GETs answered');
    my %c3 = map { $_ => served($_) - $c2{$_} } qw(A B C D);
    my $tot2 = 0; $tot2 += $_ for values %c3;
    my $share2 = $tot2 ? $c3{D} / $tot2 : 0;
    diag(sprintf "member 3's share: %.1f %% in the first window (%s), %.1f %% later (%s)",
                 100 * $share1, join(' ', map { "$_=$c1{$_}" } sort keys %c1),
                 100 * $share2, join(' ', map { "$_=$c3{$_}" } sort keys %c3));
    cmp_ok($share1, '<', $share2 * 0.75, 'slow start: a reduced share at first (against its share later; a quarter is the full share)');
    cmp_ok($share2, '>', 0.18, '... and about its full share later');
}

# ---- expect= mismatch, a health answer that never comes --------------------
{
    my $e = wait_all('odd', 0, sub { $_[0]{check} eq 'down' }, 10);
    ok($e, 'a 500 /healthz (expect=200): member down in both children');
    my ($el) = values %{ $e || {} };
    is($el && $el->{check_status}, 500, '... the last check saw 500');
    is($el && $el->{check_error}, 'status', '... check_error=status');
    my @p = probes_of('E');
    is($p[0]{method}, 'HEAD', '... probed with HEAD');
    is($p[0]{hdr}{host}, 'health.local', '... and host=');

    my $f = wait_all('odd', 1, sub { $_[0]{check} eq 'down' }, 10);
    ok($f, 'a /healthz that never answers: member down in both children');
    my ($fl) = values %{ $f || {} };
    is($fl && $fl->{check_error}, 'timeout', '... by timeout');
    my $t0 = time;
    my $r = http_request($h->port, 'GET', '/apx-status', timeout => 10);
    is($r && $r->{status}, 200, '... and the status page answers meanwhile (the probe is parked)');
    # down, and its probe on the way (700 ms of each second): "checking"
    my $checking;
    my $until = time + 10;
    while (!$checking && time < $until) {
        ($checking) = grep { $_->{balancer} eq 'odd' && $_->{index} == 1 && $_->{state} eq 'checking' } status_lines();
        sleep 0.05 unless $checking;
    }
    ok($checking, '... shown as state=checking while a probe of it is on its way');
    my $g = by_child('odd', 2);
    ok(!grep({ $_->{check} ne 'up' } values %$g), 'the healthy member of that balancer stays up');
    my @o = map { http_request($h->port, 'GET', "/o/x$_", timeout => 10) } 1 .. 20;
    is(scalar(grep { $_ && $_->{status} == 200 && $_->{body} =~ /^G / } @o), 20, 'all its requests go to the healthy member');
}

# ---- passive ejection, then back early by a passing check --------------------
{
    # requests until member 0 is ejected in some child
    my $ejected;
    for my $i (1 .. 60) {
        http_request($h->port, 'GET', "/f/x$i", timeout => 10);
        ($ejected) = grep { $_->{balancer} eq 'flaky' && $_->{index} == 0 && $_->{state} eq 'ejected' } status_lines();
        last if $ejected;
    }
    ok($ejected, 'a member whose requests fail (503) is ejected by them (passive, failures=2, ejecttime=60s)');
    my $pid = $ejected ? $ejected->{child} : 0;
    my $back;
    my $until = time + 10;
    while (!$back && time < $until) {
        ($back) = grep { $_->{balancer} eq 'flaky' && $_->{index} == 0 && $_->{child} == $pid && $_->{state} ne 'ejected' } status_lines();
        sleep 0.1 unless $back;
    }
    ok($back, '... and back long before its ejection ends, at the next passing check');
    is($back && $back->{state}, 'checking', '... on probation (state=checking)');
}

# ---- https:// and unix: members ----------------------------------------------
{
    ok(wait_all('mix', 0, sub { $_[0]{check} eq 'up' && $_[0]{checks_passed} >= 2 }, 10), 'https member: probes pass');
    cmp_ok(scalar(probes_of('T')), '>=', 2, '... the TLS backend saw them');
    ok(wait_all('mix', 2, sub { $_[0]{check} eq 'up' && $_[0]{checks_passed} >= 2 }, 10), 'unix: member: probes pass');
    cmp_ok(scalar(probes_of('U')), '>=', 2, '... the Unix-socket backend saw them');
    my $s = wait_all('mix', 1, sub { $_[0]{check} eq 'down' }, 10);
    ok($s, 'https member whose certificate its tlsca= did not sign: down');
    my ($sl) = values %{ $s || {} };
    is($sl && $sl->{check_error}, 'tls', '... check_error=tls');
    is(scalar(probes_of('S')), 0, '... no request reached it');
}

# ---- no descriptor leaks: probes that time out, fail TLS, pass -----------------
{
    my @kids = $h->children;
    my %before = map { $_ => $h->fds_of($_) } @kids;
    my $probes = scalar(probes_of('F')) + scalar(probes_of('A'));
    sleep 5;
    my %after = map { $_ => $h->fds_of($_) } @kids;
    my $done = scalar(probes_of('F')) + scalar(probes_of('A')) - $probes;
    cmp_ok($done, '>=', 6, "probes ran meanwhile ($done at two of the members)");
    for my $k (@kids) {
        cmp_ok($after{$k} - $before{$k}, '<=', 2, "child $k: open descriptors stable ($before{$k} -> $after{$k}) while ~45 probes ran");
    }
}

# ---- graceful restart: probes stop with the old children ---------------------
{
    my @old = $h->children;
    my %old = map { $_ => 1 } @old;
    $h->graceful;
    my $until = time + 20;
    sleep 0.2 while time < $until && grep { kill 0, $_ } @old;
    ok(!grep({ kill 0, $_ } @old), 'graceful restart: the old children exited (their probes ended)');
    # the new generation probes on its own segment (however many children
    # the MPM started so far)
    my $seen;
    $until = time + 15;
    while (!$seen && time < $until) {
        ($seen) = grep { $_->{balancer} eq 'pool' && $_->{index} == 0 && !$old{ $_->{child} } && $_->{checks_passed} >= 2 } status_lines();
        sleep 0.2 unless $seen;
    }
    ok($seen, 'the new generation probes');
}

open my $el, '<', $h->error_log or die;
my @log = <$el>;
ok(grep(/APX00047: balancer pool: member http:\/\/127\.0\.0\.1:$d_port failed 3 health checks in a row/, @log), 'the error log says when a member went down (APX00047)');
ok(grep(/APX00046: balancer pool: member http:\/\/127\.0\.0\.1:$d_port passed 2 health checks in a row/, @log), '... and when it came back (APX00046)');
# the killed member's own failures are logged (and retried); nothing else
my @errs = grep { /\[(?:[\w:]*)(?:error|crit|alert|emerg)\]/ && /APX\d+/ && !/APX0010[04]: .*127\.0\.0\.1:$d_port/ } @log;
is(scalar(@errs), 0, 'no APX error lines') or diag join '', @errs[0 .. ($#errs < 10 ? $#errs : 10)];
$h->stop;

# ---- configtest ----------------------------------------------------------------
my $B = '127.0.0.1:' . $be{A}->port;
for my $case (
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /healthz interval=soon\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: invalid value 'soon'.*interval=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /healthz passes=0\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: invalid value '0'.*passes=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /healthz expect=abc\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: invalid value 'abc' for option expect=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /healthz expect=400-200\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: invalid value '400-200' for option expect=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /healthz interval=1s timeout=2s\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: timeout=2000ms is longer than interval=1000ms/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET healthz\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: invalid path 'healthz'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck get /healthz\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: invalid method 'get'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /healthz colour=red\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: unknown option 'colour'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /a\nAsyncProxyHealthCheck GET /b\n</AsyncProxyBalancer>", qr/AsyncProxyHealthCheck: balancer a has one already/],
    ["AsyncProxyHealthCheck GET /healthz", qr/AsyncProxyHealthCheck: only inside <AsyncProxyBalancer/],
) {
    my ($lines, $re) = @$case;
    (my $label = $lines) =~ s/\n/ | /g;
    my $t = APX::Httpd->new(mpm => 'event', conf => $lines);
    my ($rc, $out) = $t->configtest;
    isnt($rc, 0, "configtest fails: $label");
    like($out, $re, '... naming the directive and the value') or diag $out;
}
{
    my $t = APX::Httpd->new(mpm => 'event', conf => "<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyHealthCheck GET /healthz interval=2s timeout=1s passes=2 fails=3 expect=200-399 host=h.example\nAsyncProxyBalancerSet slowstart=30s\n</AsyncProxyBalancer>\nAsyncProxyPass /a/ balancer://a/\n");
    my ($rc, $out) = $t->configtest;
    is($rc, 0, 'configtest: the issue\'s example with every option passes') or diag $out;
}

# ---- worker MPM: no engine, no probes; said once per child -------------------
{
    my $w = APX::Httpd->new(mpm => 'worker', servers => 1, server_limit => 1, threads => 10, conf => <<"EOF");
AsyncProxyPass /b/ balancer://pool/b/
<AsyncProxyBalancer pool>
    AsyncProxyMember http://$B
    AsyncProxyHealthCheck GET /healthz interval=200ms
</AsyncProxyBalancer>
EOF
    my $before = scalar probes_of('A');
    $w->start;
    my $r = http_request($w->port, 'GET', '/b/w1', timeout => 10);
    is($r && $r->{status}, 200, 'worker MPM: the balancer serves');
    sleep 1;
    is(scalar(probes_of('A')) - $before, 0, '... and sends no probe');
    open my $wl, '<', $w->error_log or die;
    ok(grep(/APX00048: AsyncProxyHealthCheck: the MPM \(worker\) is not asynchronous/, <$wl>), '... saying why (APX00048)');
    $w->stop;
}

cmp_ok(time - $t_start, '<', 300, sprintf('the file ends in bounded time (%.0f s; a hang would not)', time - $t_start));
done_testing;
