#!/usr/bin/perl
# Balancer groups (<AsyncProxyBalancer>, issue 13's first slice) with real
# backends, under the event MPM, one child (the groups' state is per
# child). Everything is asserted on what the backends saw (slowd's /stats,
# APX::Backend's request log) and on the module's status page, never on
# timing:
#   - requests to a group of 4 are spread over all 4;
#   - wrr with weights 3:1 gives 3:1;
#   - one member killed under load: no client error for the GETs (retried
#     on other members), the member is shown ejected and gets nothing while
#     ejected (its port answers again meanwhile), then takes requests again
#     once its eject time has passed;
#   - a POST whose member dies after reading the body is not replayed (the
#     backends see it exactly once) and the client gets 502; a GET in the
#     same case is retried; a POST whose connect is refused is retried;
#   - sticky routes (JSESSIONID=abc.m2, the cookie or the URL parameter);
#   - hash on a header keeps each key on one member;
#   - a member 10x slower gets clearly less traffic with p2c-ewma;
#   - the status page (HTML and ?auto) shows the members;
#   - configtest names the directive and the value of each bad setting.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use Time::HiRes qw(sleep time);

my $t_start = time;
my $SLOWD = $ENV{APX_SLOWD} || APX::Httpd::top() . '/build/bench/slowd';
die "$SLOWD is not built (make -C bench slowd)\n" unless -x $SLOWD;

# slowd on a chosen port, so a killed member can come back on it
my @slowds;
sub slowd_on {
    my ($port) = @_;
    my $pid = open(my $out, '-|', $SLOWD, '-p', $port, '-q') or die "slowd: $!";
    my $line = <$out> // '';
    $line =~ /listening on 127\.0\.0\.1:$port/ or die "slowd did not start on $port: $line";
    my $sd = { pid => $pid, port => $port, fh => $out };
    push @slowds, $sd;
    return $sd;
}
sub slowd_stop {
    my ($sd, $sig) = @_;
    return unless $sd->{pid};
    kill $sig // 'TERM', $sd->{pid};
    close $sd->{fh};
    $sd->{pid} = 0;
}
END { local $?; slowd_stop($_) for @slowds }

# GET /delay/ requests a slowd answered
sub served {
    my ($port) = @_;
    my $r = http_request($port, 'GET', '/stats');
    return $r && $r->{body} =~ /^delay (\d+)$/m ? $1 : -1;
}
sub counts { [map { served($_->{port}) } @_] }
sub delta { my ($a, $b) = @_; [map { $b->[$_] - $a->[$_] } 0 .. $#$a] }

# The members on the status page: { balancer => [ {url, state, ...}, ... ] }
sub members {
    my ($port) = @_;
    my $r = http_request($port, 'GET', '/apx-status');
    my %m;
    for my $l (split /\n/, $r ? $r->{body} : '') {
        next unless $l =~ /^AsyncProxyMember: (.*)$/;
        my %kv = map { split /=/, $_, 2 } split ' ', $1;
        $m{ $kv{balancer} }[ $kv{index} ] = \%kv;
    }
    return \%m;
}

sub get_all {
    my ($port, $path, $n, %h) = @_;
    return map { my $r = http_request($port, 'GET', $path, headers => [%h]); $r ? $r->{status} : 0 } 1 .. $n;
}

# ---- backends --------------------------------------------------------------
my @m = map { slowd_on(APX::Httpd::free_port()) } 0 .. 3;
my @mp = map { $_->{port} } @m;
my $DEAD = APX::Httpd::free_port();

# A member that reads each request (and its body) and dies without a word;
# one that answers; both log what they read.
my $dies = APX::Backend->new(handler => sub { [[close => 1]] });
my $lives = APX::Backend->new(handler => sub {
    my ($req) = @_;
    return APX::Backend::response(200, "lives $req->{method} $req->{body}\n");
});
# p2c-ewma: three fast members and one 10x slower
my @speed = (0.01, 0.01, 0.01, 0.1);
my @pb = map { my $d = $_; APX::Backend->new(handler => sub { [[sleep => $d], [send => APX::Backend::response(200, "ok\n")]] }) } @speed;

my $members4 = join '', map { "    AsyncProxyMember http://127.0.0.1:$mp[$_] route=m$_\n" } 0 .. 3;
my $conf = <<"EOF";
<AsyncProxyBalancer spread>
$members4</AsyncProxyBalancer>
AsyncProxyPass /spread/ balancer://spread/

<AsyncProxyBalancer wrr>
    AsyncProxyMember http://127.0.0.1:$mp[0] weight=3
    AsyncProxyMember http://127.0.0.1:$mp[1] weight=1
    AsyncProxyBalancerSet lbmethod=wrr
</AsyncProxyBalancer>
AsyncProxyPass /wrr/ balancer://wrr/

<AsyncProxyBalancer kill>
$members4    AsyncProxyBalancerSet failures=2 ejecttime=4s slowstart=0
</AsyncProxyBalancer>
AsyncProxyPass /kill/ balancer://kill/

<AsyncProxyBalancer sticky>
$members4    AsyncProxyBalancerSet stickysession=JSESSIONID
</AsyncProxyBalancer>
<Location /sticky/>
    AsyncProxyPass balancer://sticky/
</Location>

<AsyncProxyBalancer hash>
$members4    AsyncProxyBalancerSet lbmethod=hash hashkey=header:X-User
</AsyncProxyBalancer>
AsyncProxyPass /hash/ balancer://hash/

<AsyncProxyBalancer flaky>
    AsyncProxyMember http://127.0.0.1:@{[ $dies->port ]} route=dies
    AsyncProxyMember http://127.0.0.1:@{[ $lives->port ]} route=lives
    AsyncProxyBalancerSet stickysession=JSESSIONID failures=0
</AsyncProxyBalancer>
AsyncProxyPass /flaky/ balancer://flaky/
<AsyncProxyBalancer refused>
    AsyncProxyMember http://127.0.0.1:$DEAD route=dead
    AsyncProxyMember http://127.0.0.1:@{[ $lives->port ]} route=lives
    AsyncProxyBalancerSet stickysession=JSESSIONID failures=0
</AsyncProxyBalancer>
AsyncProxyPass /refused/ balancer://refused/

AsyncProxyPass /slow/ balancer://p2c/
<AsyncProxyBalancer p2c>
@{[ join '', map { "    AsyncProxyMember http://127.0.0.1:" . $_->port . "\n" } @pb ]}</AsyncProxyBalancer>
EOF

my $h = APX::Httpd->new(mpm => 'event', servers => 1, server_limit => 1, threads => 25, conf => $conf,
                        global => "AsyncProxyParkDelay 0");
$h->start;
my $HP = $h->port;

# ---- spread ----------------------------------------------------------------
{
    my $c0 = counts(@m);
    my @conns = map { { reqs => [map { get_req('/spread/delay/5/64') } 1 .. 25] } } 1 .. 8;
    my $ok = multiplex(port => $HP, conns => \@conns, timeout => 30);
    is($ok, 8, 'spread: 8 clients x 25 GETs, all answered');
    my @st = map { $_->{status} } map { @{ $_->{resps} } } @conns;
    is(scalar(grep { $_ == 200 } @st), 200, '... all 200');
    my $d = delta($c0, counts(@m));
    note "spread: members saw @$d";
    is(eval { my $s = 0; $s += $_ for @$d; $s }, 200, '... the members saw 200 requests between them');
    ok(!grep({ $_ < 10 } @$d), "... each of the 4 members got a share (@$d)");
}

# ---- wrr 3:1 -----------------------------------------------------------------
{
    my $c0 = counts(@m[0, 1]);
    my @st = get_all($HP, '/wrr/delay/0/8', 40);
    is(scalar(grep { $_ == 200 } @st), 40, 'wrr: 40 GETs answered');
    my $d = delta($c0, counts(@m[0, 1]));
    ok($d->[0] >= 28 && $d->[0] <= 32 && $d->[1] >= 8 && $d->[1] <= 12,
       "wrr: weights 3:1 give 3:1 at the backends ($d->[0]:$d->[1])");
}

# ---- sticky routes -------------------------------------------------------------
{
    my $c0 = counts(@m);
    my @st = get_all($HP, '/sticky/delay/0/8', 20, Cookie => 'a=b; JSESSIONID=abc.m2; c=d');
    is(scalar(grep { $_ == 200 } @st), 20, 'sticky: 20 GETs with JSESSIONID=abc.m2 answered');
    my $d = delta($c0, counts(@m));
    is_deeply($d, [0, 0, 20, 0], "... every one went to member m2 (@$d)");
    $c0 = counts(@m);
    @st = get_all($HP, '/sticky/delay/0/8?x=1&JSESSIONID=zz.m1', 10);
    $d = delta($c0, counts(@m));
    is_deeply($d, [0, 10, 0, 0], "... the route in the URL (?JSESSIONID=zz.m1) goes to m1 (@$d)");
    $c0 = counts(@m);
    @st = get_all($HP, '/sticky/delay/0/8', 20, Cookie => 'JSESSIONID=abc.nosuch');
    $d = delta($c0, counts(@m));
    ok(scalar(grep { $_ == 200 } @st) == 20 && (grep { $_ > 0 } @$d) >= 2,
       "... an unknown route is balanced as usual (@$d)");
}

# ---- hash on a header ------------------------------------------------------------
{
    my (%where, @used);
    for my $user (qw(alice bob carol dave erin frank grace heidi)) {
        my $c0 = counts(@m);
        my @st = get_all($HP, '/hash/delay/0/8', 6, 'X-User' => $user);
        my $d = delta($c0, counts(@m));
        my @hit = grep { $d->[$_] } 0 .. 3;
        $where{$user} = "@hit" . (grep({ $_ != 200 } @st) ? ' (errors)' : '');
        $used[$_]++ for @hit;
    }
    ok(!grep({ $where{$_} !~ /^\d$/ } keys %where),
       'hash: each X-User value always on one member (' . join(', ', map { "$_=$where{$_}" } sort keys %where) . ')');
    cmp_ok(scalar(grep { $_ } @used), '>=', 2, '... and 8 keys use more than one member');
}

# ---- retries: POST never replayed, GET retried ---------------------------------
{
    my $r = http_request($HP, 'POST', '/flaky/order', body => 'order-1',
                         headers => [Cookie => 'JSESSIONID=x.dies']);
    is($r && $r->{status}, 502, 'POST to a member that dies after reading the body: 502');
    my @seen = grep { $_->{method} eq 'POST' } ($dies->requests, $lives->requests);
    is(scalar(@seen), 1, '... the backends saw that POST exactly once (not replayed)');
    is($seen[0] && $seen[0]{body}, 'order-1', '... with its body');

    $r = http_request($HP, 'GET', '/flaky/item', headers => [Cookie => 'JSESSIONID=x.dies']);
    is($r && $r->{status}, 200, 'GET to the same member: retried on another, 200');
    like($r && $r->{body}, qr/^lives GET/, '... answered by the member that lives');
    is(scalar(grep { $_->{method} eq 'GET' } $dies->requests), 1, '... after the dying member read it once');

    $r = http_request($HP, 'POST', '/refused/order', body => 'order-2',
                      headers => [Cookie => 'JSESSIONID=x.dead']);
    is($r && $r->{status}, 200, 'POST whose member refuses the connection: retried, 200');
    is(scalar(grep { $_->{method} eq 'POST' && $_->{body} eq 'order-2' } ($dies->requests, $lives->requests)), 1,
       '... the POST reached a member exactly once');
}

# ---- p2c-ewma with one member 10x slower -----------------------------------------
{
    my @conns = map { { reqs => [map { get_req("/slow/x$_") } 1 .. 30] } } 1 .. 8;
    my $ok = multiplex(port => $HP, conns => \@conns, timeout => 60);
    is($ok, 8, 'p2c-ewma: 8 clients x 30 GETs, all answered');
    my @n = map { scalar(() = $_->requests) } @pb;
    note "p2c-ewma: fast members saw @n[0..2], the slow one $n[3]";
    my $fast = ($n[0] + $n[1] + $n[2]) / 3;
    ok($n[3] * 2 < $fast, "p2c-ewma: the 10x slower member got clearly less ($n[3] vs about $fast each)");
}

# ---- one member killed under load ------------------------------------------------
{
    my $victim = 3;
    my $killed_at;
    my @conns = map { { reqs => [map { get_req('/kill/delay/10/64') } 1 .. 60] } } 1 .. 8;
    my $ok = multiplex(port => $HP, conns => \@conns, timeout => 60, tick_every => 0.1, tick => sub {
        return if $killed_at;
        my $done = 0;
        $done += @{ $_->{resps} } for @conns;
        if ($done >= 100) {
            slowd_stop($m[$victim], 'KILL');
            $killed_at = time;
        }
    });
    ok($killed_at, 'kill: member m3 was killed under load');
    my @st = map { $_->{status} } map { @{ $_->{resps} } } @conns;
    is($ok, 8, 'kill: every client got all its answers');
    is(scalar(grep { $_ != 200 } @st), 0, '... zero client errors among ' . scalar(@st) . ' GETs (retried on other members)');
    my $mm = members($HP)->{kill};
    is($mm->[$victim]{state}, 'ejected', 'kill: the status page shows m3 ejected');
    cmp_ok($mm->[$victim]{ejections}, '>=', 1, '... with an ejection counted');
    cmp_ok(eval { my $s = 0; $s += $_->{retries} for @$mm; $s }, '>=', 1, '... and the retries');

    # back on its port at once; still ejected for the rest of ejecttime=4s
    $m[$victim] = slowd_on($mp[$victim]);
    my $back0 = served($mp[$victim]);
    my @st2 = get_all($HP, '/kill/delay/0/8', 20);
    my $still = members($HP)->{kill}[$victim]{state};
    is($still, 'ejected', 'kill: m3 is still ejected within its eject time');
    is(served($mp[$victim]) - $back0, 0, '... and got no request meanwhile (its port answers again)');
    is(scalar(grep { $_ != 200 } @st2), 0, '... the others served all 20');

    ok(wait_for(sub { (members($HP)->{kill}[$victim]{state} // '') ne 'ejected' }, 8),
       'kill: m3 comes back once the eject time has passed');
    my @st3 = get_all($HP, '/kill/delay/0/8', 40);
    my $got = served($mp[$victim]) - $back0;
    cmp_ok($got, '>', 0, "... and takes requests again ($got of 40)");
    is(scalar(grep { $_ != 200 } @st3), 0, '... all 200');
    is(members($HP)->{kill}[$victim]{state}, 'up', '... and is up after its successes');
}

# ---- status page ---------------------------------------------------------------------
{
    my $auto = http_request($HP, 'GET', '/server-status?auto');
    like($auto && $auto->{body}, qr/^AsyncProxyMember: balancer=kill index=3 url=http:\/\/127\.0\.0\.1:$mp[3] route=m3 weight=1 state=\w+ inflight=\d+ latency_us=\d+ requests=\d+ failures=\d+ ejections=\d+ retries=\d+ max=0 inflight_all=0 held_here=0 queued=0 queued_here=0 queue_timeouts=0 queue_full=0 queue_gone=0 queue_dispatched=0 queue_max_wait_ms=0 slots_reclaimed=0 check=none checks_passed=0 checks_failed=0 check_status=0 check_ms=0 check_error=- check_age_ms=-1 check_run=\d+ weight_now=\d+ child=\d+$/m,
         'mod_status ?auto: one line per member with state, in flight, latency, requests, failures, ejections, retries');
    my $html = http_request($HP, 'GET', '/server-status');
    like($html && $html->{body}, qr{<h3>balancer://kill</h3>.*http://127\.0\.0\.1:$mp[3]}s,
         'mod_status HTML: a table per balancer naming its members');
}

$h->stop;
my $ports = join '|', @mp, $dies->port, $lives->port, $DEAD;
my @bad = $h->error_lines(qr/APX001\d\d: .*127\.0\.0\.1:($ports)\b/);
is_deeply(\@bad, [], 'no error-log line other than the failures of the members') or diag join "\n", @bad;
my $log = $h->slurp_log;
like($log, qr/APX00025: balancer kill: member http:\/\/127\.0\.0\.1:$mp[3] ejected/, 'the ejection is logged with the member URL');
like($log, qr/APX00027: balancer kill: member http:\/\/127\.0\.0\.1:$mp[3] is back up/, '... and its return');

# ---- the worker MPM (synchronous driver): the same groups ------------------------
{
    my $w = APX::Httpd->new(mpm => 'worker', servers => 1, server_limit => 1, threads => 25, conf => $conf);
    $w->start;
    my $WP = $w->port;
    my $c0 = counts(@m);
    my @conns = map { { reqs => [map { get_req('/spread/delay/5/64') } 1 .. 10] } } 1 .. 8;
    my $ok = multiplex(port => $WP, conns => \@conns, timeout => 30);
    my $d = delta($c0, counts(@m));
    ok($ok == 8 && !grep({ $_ < 5 } @$d), "[worker] 80 GETs spread over the 4 members (@$d)");
    my $r = http_request($WP, 'GET', '/flaky/item', headers => [Cookie => 'JSESSIONID=x.dies']);
    like($r && $r->{body}, qr/^lives GET/, '[worker] a GET whose member dies is retried on another');
    $w->stop;
    my @wbad = $w->error_lines(qr/APX001\d\d: .*127\.0\.0\.1:($ports)\b/);
    is_deeply(\@wbad, [], '[worker] no unexpected error-log line') or diag join "\n", @wbad;
}

# ---- configtest ----------------------------------------------------------------------
my $B = "127.0.0.1:$mp[0]";
for my $case (
    ["AsyncProxyPass /x/ balancer://nope/", qr/AsyncProxyPass \/x\/ balancer:\/\/nope\/.*unknown balancer 'nope'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember ftp://$B\n</AsyncProxyBalancer>", qr/AsyncProxyMember: invalid value 'ftp:\/\/$B': scheme 'ftp'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B/app\n</AsyncProxyBalancer>", qr/AsyncProxyMember: invalid value 'http:\/\/$B\/app'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember not-a-url\n</AsyncProxyBalancer>", qr/AsyncProxyMember: invalid value 'not-a-url'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B weight=0\n</AsyncProxyBalancer>", qr/AsyncProxyMember: invalid value '0'.*weight=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B colour=red\n</AsyncProxyBalancer>", qr/AsyncProxyMember: unknown option 'colour'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B route=r\nAsyncProxyMember http://127.0.0.1:$mp[1] route=r\n</AsyncProxyBalancer>", qr/AsyncProxyMember: invalid value 'r' for option route=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyBalancerSet lbmethod=fastest\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: invalid value 'fastest' for option lbmethod=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyBalancerSet lbmethod=hash hashkey=body\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: invalid value 'body' for option hashkey=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyBalancerSet failstatus=404\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: invalid value '404' for option failstatus=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyBalancerSet maxeject=150%\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: invalid value '150%' for option maxeject=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyBalancerSet ejecttime=soon\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: invalid value 'soon'.*ejecttime=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\nAsyncProxyBalancerSet retries=3\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: unknown option 'retries'/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B max=lots\n</AsyncProxyBalancer>", qr/AsyncProxyMember: invalid value 'lots'.*max=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B idle=-1\n</AsyncProxyBalancer>", qr/AsyncProxyMember: invalid value '-1'.*idle=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B max=5\nAsyncProxyBalancerSet queue=many\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: invalid value 'many'.*queue=/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B max=5\nAsyncProxyBalancerSet queuetimeout=soon\n</AsyncProxyBalancer>", qr/AsyncProxyBalancerSet: invalid value 'soon'.*queuetimeout=/],
    ["<AsyncProxyBalancer a>\n</AsyncProxyBalancer>", qr/<AsyncProxyBalancer a: no AsyncProxyMember/],
    ["AsyncProxyMember http://$B", qr/AsyncProxyMember: only inside <AsyncProxyBalancer/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\n</AsyncProxyBalancer>\nAsyncProxyPass /x/ balancer://a/ max=5", qr/AsyncProxyPass: option 'max=5' is not for a balancer/],
    ["<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\n</AsyncProxyBalancer>\n<AsyncProxyBalancer a>\nAsyncProxyMember http://$B\n</AsyncProxyBalancer>", qr/<AsyncProxyBalancer a: defined twice/],
) {
    my ($lines, $re) = @$case;
    (my $label = $lines) =~ s/\n/ | /g;
    my $c = APX::Httpd->new(mpm => 'event', conf => $lines);
    my ($rc, $out) = $c->configtest;
    isnt($rc, 0, "configtest fails: $label");
    like($out, $re, '... naming the directive and the value') or diag $out;
}
{
    my $good = <<"EOF";
AsyncProxyPass /a/ balancer://later/v1/ timeout=5 upgrade=websocket
<AsyncProxyBalancer balancer://later>
    AsyncProxyMember http://$B weight=2 route=one idle=10 ttl=2s max=100
    AsyncProxyMember http://127.0.0.1:$mp[1]/ loadfactor=100 route=two
    AsyncProxyBalancerSet lbmethod=hash hashkey=cookie:sid stickysession=JSESSIONID|jsessionid
    AsyncProxyBalancerSet failures=3 ejecttime=10s maxeject=25% retrybudget=10% slowstart=off failstatus=500,503
    AsyncProxyBalancerSet queue=500 queuetimeout=2s
</AsyncProxyBalancer>
EOF
    my $c = APX::Httpd->new(mpm => 'event', conf => $good);
    my ($rc, $out) = $c->configtest;
    is($rc, 0, 'configtest: a balancer defined after its use, with every option, passes') or diag $out;
}

cmp_ok(time - $t_start, '<', 300, sprintf('the file ends in bounded time (%.0f s; a hang would not)', time - $t_start));
done_testing;
