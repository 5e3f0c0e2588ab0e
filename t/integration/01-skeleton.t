#!/usr/bin/perl
# The module loads in Debian's httpd, validates its directives, starts one
# engine per child under the event MPM (synchronous mode under worker), and
# start / graceful / graceful-stop / stop leave no error and no stuck thread.
use strict;
use warnings;
use Test::More;
use lib 't/lib';
use APX::Httpd;
use APX::Client qw(http_request parse_figures);
use Time::HiRes qw(sleep time);

# the whole answer to a GET (head and body), '' when none came
sub get {
    my ($h, $path) = @_;
    my $r = http_request($h->port, 'GET', $path);
    return $r ? $r->{raw} : '';
}

# --- bad directive values: configtest fails naming directive and value ---
my @bad = (
    ['AsyncProxyWorkers 0',        qr/AsyncProxyWorkers: invalid value '0'/],
    ['AsyncProxyWorkers abc',      qr/AsyncProxyWorkers: invalid value 'abc'/],
    ['AsyncProxyWorkers 8 2',      qr/AsyncProxyWorkers: invalid value '8 2'.*maximum is below/],
    ['AsyncProxyWorkers 2 99999',  qr/AsyncProxyWorkers: invalid value '99999'/],
    ['AsyncProxyStackSize 1K',     qr/AsyncProxyStackSize: invalid value '1K'/],
    ['AsyncProxyStackSize 12Q',    qr/AsyncProxyStackSize: invalid value '12Q'/],
    ['AsyncProxyStackSize 64G',    qr/AsyncProxyStackSize: invalid value '64G'/],
);
for my $case (@bad) {
    my $h = APX::Httpd->new(global => $case->[0]);
    my ($rc, $out) = $h->configtest;
    isnt($rc, 0, "configtest fails for '$case->[0]'");
    like($out, $case->[1], "... and names the directive and value") or diag $out;
}
{
    my $h = APX::Httpd->new(conf => 'AsyncProxyWorkers 4');
    my ($rc, $out) = $h->configtest;
    isnt($rc, 0, 'AsyncProxyWorkers inside <VirtualHost> is refused');
    like($out, qr/AsyncProxyWorkers: .*main server/, '... with a message saying where it belongs');
}
{
    my $h = APX::Httpd->new(global => "AsyncProxyWorkers 3 6\nAsyncProxyStackSize 256K");
    my ($rc, $out) = $h->configtest;
    is($rc, 0, 'good values pass configtest') or diag $out;
}

# --- event MPM: asynchronous mode, engine threads, clean lifecycle ---
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 10,
                            global => "AsyncProxyWorkers 3 6\nLogLevel warn asyncproxy:debug");
    $h->start;
    my @kids = $h->children;
    is(scalar @kids, 1, 'one child');
    my $log = $h->slurp_log;
    like($log, qr/APX00006: asynchronous mode: MPM event, engine with 3\.\.6 workers, 131072-byte/,
         'child_init logs asynchronous mode with the engine settings');
    my $st = get($h, '/apx-status');
    like($st, qr/^AsyncProxyMode: async$/m, 'status handler reports async mode');
    is(parse_figures($st)->{Workers}, 3, 'engine runs workers_min workers');
    my $auto = get($h, '/server-status?auto');
    like($auto, qr/^AsyncProxyMode: async$/m, 'mod_status ?auto carries the module figures');
    like(get($h, '/server-status'), qr/mod_asyncproxy/, 'mod_status HTML page carries them too');
    # threads: main + listener + 10 MPM workers + poller + 3 engine workers
    my $thr = $h->threads_of($kids[0]);
    is($thr, 1 + 1 + 10 + 1 + 3, "child has the MPM's threads plus poller and 3 workers ($thr)");

    my $fds_parent = $h->fds_of($h->pid);
    $h->graceful;
    my @new = $h->children;
    ok(@new >= 1, 'graceful restart: a new child runs');
    my $end = time + 10;
    sleep 0.1 while kill(0, $kids[0]) && time < $end;
    ok(!kill(0, $kids[0]), 'graceful restart: the old child exited');
    like($h->slurp_log, qr/APX00002: engine stopped and joined/, 'old child joined its engine in the pre-cleanup');
    is($h->fds_of($h->pid), $fds_parent, 'parent holds no more fds after graceful restart');
    like(get($h, '/apx-status'), qr/^AsyncProxyMode: async$/m, 'new generation serves in async mode');

    my @kids2 = $h->children;
    ok($h->graceful_stop(20), 'graceful-stop ends the server');
    ok(!grep({ kill 0, $_ } @kids2), 'no child left after graceful-stop');
    my $joins = () = $h->slurp_log =~ /APX00002: engine stopped and joined/g;
    ok($joins >= 2, "every child joined its engine ($joins)");
    is_deeply([$h->error_lines], [], 'no error-log line at level error or above (event)');
}
{
    my $h = APX::Httpd->new(mpm => 'event', threads => 5, global => 'LogLevel warn asyncproxy:debug');
    $h->start;
    my @kids = $h->children;
    ok($h->stop, '-k stop (SIGTERM) ends the server');
    ok(!grep({ kill 0, $_ } @kids), 'no child left after stop');
    like($h->slurp_log, qr/APX00002: engine stopped and joined/, 'stop: engine joined');
    is_deeply([$h->error_lines], [], 'no error-log line at level error or above (stop)');
}

# --- worker MPM: synchronous mode, no engine threads ---
{
    my $h = APX::Httpd->new(mpm => 'worker', threads => 10);
    $h->start;
    like($h->slurp_log, qr/APX00004: synchronous mode: the MPM \(worker\)/, 'worker MPM: synchronous mode logged');
    like(get($h, '/apx-status'), qr/^AsyncProxyMode: sync$/m, 'status reports sync mode');
    my @kids = $h->children;
    is($h->threads_of($kids[0]), 1 + 1 + 10, 'worker MPM child has no engine threads');
    $h->graceful;
    ok($h->stop, 'worker MPM stops');
    is_deeply([$h->error_lines], [], 'no error-log line at level error or above (worker)');
}

done_testing;
