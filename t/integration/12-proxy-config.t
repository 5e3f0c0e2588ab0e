#!/usr/bin/perl
# The proxy directives refuse bad values at configuration time: `apache2 -t`
# fails with a message that names the directive and the offending value, so
# the administrator knows which line to fix. Good configurations pass. At
# start-up under the event MPM the module warns (APX00007) when
# AsyncRequestWorkerFactor lets the MPM hold fewer connections than
# AsyncProxyMaxParked, naming the value to set; the value it names is
# enough (a server started with it does not warn), and no warning comes
# when the factor is high enough or the MPM is not asynchronous.
# Every case runs under the event MPM and the worker MPM.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;

my $B = '127.0.0.1:' . APX::Httpd::free_port();    # nothing needs to listen there

# [where ('conf' = in the VirtualHost, 'global' = main server), lines,
#  regex the output must match (directive + value named)]
my @bad = (
    # AsyncProxyPass
    [conf => "AsyncProxyPass api/ http://$B/",
     qr/AsyncProxyPass: invalid value 'api\/': the path must start with '\/'/],
    [conf => "AsyncProxyPass /api/ v1/",
     qr/AsyncProxyPass: invalid value 'v1\/': not an absolute URL/],
    [conf => "AsyncProxyPass /api/ /v1/",
     qr/AsyncProxyPass: invalid value '\/v1\/': not an absolute URL/],
    [conf => "AsyncProxyPass /api/ https://$B/ tlsverify=maybe",
     qr/AsyncProxyPass: invalid value 'maybe' for option tlsverify=/],
    [conf => "AsyncProxyPass /api/ ftp://$B/",
     qr/AsyncProxyPass: invalid value 'ftp:\/\/\Q$B\E\/': scheme 'ftp' is not supported/],
    [conf => "AsyncProxyPass /api/ http://$B/?x=1",
     qr/AsyncProxyPass: invalid value 'http:\/\/\Q$B\E\/\?x=1': a backend URL has no query/],
    [conf => "AsyncProxyPass /api/",
     qr/AsyncProxyPass: missing argument/],
    [conf => "AsyncProxyPass",
     qr/AsyncProxyPass: missing argument/],
    [conf => "AsyncProxyPass /api/ http://$B/ foo=1",
     qr/AsyncProxyPass: unknown option 'foo'/],
    [conf => "AsyncProxyPass /api/ http://$B/ timeout",
     qr/AsyncProxyPass: invalid option 'timeout': expected key=value/],
    [conf => "AsyncProxyPass /api/ http://$B/ timeout=abc",
     qr/AsyncProxyPass: invalid value 'abc': not a duration.*\(option timeout=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/ timeout=0",
     qr/AsyncProxyPass: invalid value '0': must be between .*\(option timeout=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/ connecttimeout=5x",
     qr/AsyncProxyPass: invalid value '5x': not a duration.*\(option connecttimeout=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/ parkdelay=-1",
     qr/AsyncProxyPass: invalid value '-1': not a duration.*\(option parkdelay=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/ parkdelay=61s",
     qr/AsyncProxyPass: invalid value '61s': must be between .*\(option parkdelay=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/ max=-1",
     qr/AsyncProxyPass: invalid value '-1': not a whole number \(option max=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/ max=1e3",
     qr/AsyncProxyPass: invalid value '1e3': not a whole number \(option max=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/ ttl=soon",
     qr/AsyncProxyPass: invalid value 'soon': not a duration.*\(option ttl=\)/],
    [conf => "AsyncProxyPass /api/ http://$B/a/\nAsyncProxyPass /api/ http://$B/b/",
     qr/AsyncProxyPass: path '\/api\/' is mapped twice/],
    [conf => "AsyncProxyPass /static/ ! timeout=5",
     qr/AsyncProxyPass: invalid value 'timeout=5': no options after '!'/],
    [conf => "<Location /r/>\nAsyncProxyPass\n</Location>",
     qr/AsyncProxyPass: missing argument/],
    [conf => "<LocationMatch ^/r/>\nAsyncProxyPass http://$B/\n</LocationMatch>",
     qr/AsyncProxyPass: not allowed in a <Location> with a regular expression/],
    [conf => "<Location /r/>\nAsyncProxyPass ftp://$B/\n</Location>",
     qr/AsyncProxyPass: invalid value 'ftp:\/\/\Q$B\E\/': scheme 'ftp'/],
    [conf => "<Location /r/>\nAsyncProxyPass http://$B/ bogus=2\n</Location>",
     qr/AsyncProxyPass: unknown option 'bogus'/],
    # AsyncProxyPassReverse
    [conf => "AsyncProxyPassReverse /api/",
     qr/AsyncProxyPassReverse: wrong number of arguments \(usage: PATH URL\)/],
    [conf => "AsyncProxyPassReverse /api/ http://$B/ extra",
     qr/AsyncProxyPassReverse takes 1-2 arguments/],
    [conf => "AsyncProxyPassReverse api/ http://$B/",
     qr/AsyncProxyPassReverse: invalid value 'api\/': the path must start with '\/'/],
    [conf => "AsyncProxyPassReverse /api/ ftp://$B/",
     qr/AsyncProxyPassReverse: invalid value 'ftp:\/\/\Q$B\E\/': not an http:\/\/, https:\/\/ or balancer:\/\/ URL/],
    [conf => "<Location /r/>\nAsyncProxyPassReverse /r/ http://$B/\n</Location>",
     qr/AsyncProxyPassReverse: wrong number of arguments \(usage: URL\)/],
    # durations
    [conf => "AsyncProxyTimeout abc", qr/AsyncProxyTimeout: invalid value 'abc': not a duration/],
    [conf => "AsyncProxyTimeout 0",   qr/AsyncProxyTimeout: invalid value '0': must be between/],
    [conf => "AsyncProxyTimeout -5",  qr/AsyncProxyTimeout: invalid value '-5': not a duration/],
    [conf => "AsyncProxyTimeout 10h", qr/AsyncProxyTimeout: invalid value '10h': not a duration/],
    [conf => "AsyncProxyTimeout 2days", qr/AsyncProxyTimeout: invalid value '2days'/],
    [conf => "AsyncProxyConnectTimeout 1.5", qr/AsyncProxyConnectTimeout: invalid value '1\.5': not a duration/],
    [conf => "AsyncProxyConnectTimeout 0ms", qr/AsyncProxyConnectTimeout: invalid value '0ms': must be between/],
    [conf => "AsyncProxyConnectTimeout 2h", qr/AsyncProxyConnectTimeout: invalid value '2h'/],
    [conf => "AsyncProxyParkDelay soon", qr/AsyncProxyParkDelay: invalid value 'soon': not a duration/],
    [conf => "AsyncProxyParkDelay 61",   qr/AsyncProxyParkDelay: invalid value '61': must be between/],
    [conf => "AsyncProxyParkDelay -1ms", qr/AsyncProxyParkDelay: invalid value '-1ms': not a duration/],
    [conf => "<Location /r/>\nAsyncProxyTimeout 5\n</Location>", qr/AsyncProxyTimeout not allowed in <Location> context/],
    # flags
    [conf => "AsyncProxyPreserveHost yes", qr/AsyncProxyPreserveHost must be On or Off/],
    [conf => "AsyncProxyAddHeaders 1", qr/AsyncProxyAddHeaders must be On or Off/],
    # engine-wide settings
    [global => "AsyncProxyMaxParked 0",   qr/AsyncProxyMaxParked: invalid value '0': must be between 1 and/],
    [global => "AsyncProxyMaxParked -3",  qr/AsyncProxyMaxParked: invalid value '-3': not a whole number/],
    [global => "AsyncProxyMaxParked lots", qr/AsyncProxyMaxParked: invalid value 'lots': not a whole number/],
    [conf => "AsyncProxyMaxParked 100",
     qr/AsyncProxyMaxParked: .*main server config only.*VirtualHost/],
    [global => "AsyncProxyRetryAfter soon", qr/AsyncProxyRetryAfter: invalid value 'soon': not a whole number/],
    [global => "AsyncProxyRetryAfter 86401", qr/AsyncProxyRetryAfter: invalid value '86401': must be between/],
    [conf => "AsyncProxyRetryAfter 2", qr/AsyncProxyRetryAfter: .*main server config only/],
);

my $good = <<"EOF";
AsyncProxyTimeout 30
AsyncProxyConnectTimeout 500ms
AsyncProxyParkDelay 0
AsyncProxyPreserveHost Off
AsyncProxyAddHeaders On
AsyncProxyPass /api/ http://$B/v1/ timeout=60 connecttimeout=3 parkdelay=5ms max=16 ttl=2s
AsyncProxyPass /API2/ HTTP://$B TIMEOUT=1m
AsyncProxyPassReverse /api/ http://$B/v1/
AsyncProxyPass /api/static/ !
AsyncProxyPass /other http://localhost:1/
AsyncProxyPass /pool-one/ http://$B/v1/ max=1
AsyncProxyPass /pool-fifty/ http://$B/v1/ max=50 ttl=60s
<Location /reports/>
    AsyncProxyPass http://$B/reports/ timeout=300
    AsyncProxyPassReverse http://$B/reports/
</Location>
<Location /reports/static/>
    AsyncProxyPass !
</Location>
EOF
my $good_global = "AsyncProxyMaxParked 5000\nAsyncProxyRetryAfter 0\nAsyncProxyWorkers 2 4\n"
                . "AsyncProxyPass /main/ http://$B/\nAsyncProxyTimeout 2m";

for my $mpm (qw(event worker)) {
    note "=== MPM $mpm ===";
    for my $case (@bad) {
        my ($where, $lines, $re) = @$case;
        (my $label = $lines) =~ s/\n/ | /g;
        my $h = APX::Httpd->new(mpm => $mpm, $where => $lines);
        my ($rc, $out) = $h->configtest;
        isnt($rc, 0, "[$mpm] configtest fails: $label");
        like($out, $re, "[$mpm] ... naming the directive and the value") or diag $out;
        unlike($out, qr/Syntax OK/, "[$mpm] ... and does not say Syntax OK");
    }
    {
        my $h = APX::Httpd->new(mpm => $mpm, conf => $good, global => $good_global);
        my ($rc, $out) = $h->configtest;
        is($rc, 0, "[$mpm] a configuration using every directive and option passes") or diag $out;
        like($out, qr/Syntax OK/, "[$mpm] ... Syntax OK");
    }
    # the same mapping path in the main server and in a virtual host is no
    # duplicate (the virtual host's own wins by merging)
    {
        my $h = APX::Httpd->new(mpm => $mpm, global => "AsyncProxyPass /api/ http://$B/a/",
                                conf => "AsyncProxyPass /api/ http://$B/b/");
        my ($rc, $out) = $h->configtest;
        is($rc, 0, "[$mpm] the same path in the main server and a virtual host is allowed") or diag $out;
    }
    # max= and ttl= are per mapping: different values for one backend, in
    # one server or across servers, are no conflict (each gets its pool)
    {
        my $h = APX::Httpd->new(mpm => $mpm, global => "AsyncProxyPass /a/ http://$B/ max=50 ttl=10s",
                                conf => "AsyncProxyPass /b/ http://$B/ max=1\nAsyncProxyPass /c/ http://$B/ max=0");
        my ($rc, $out) = $h->configtest;
        is($rc, 0, "[$mpm] mappings to one backend with different max=/ttl= pass configtest") or diag $out;
    }
}

# --- APX00007: AsyncRequestWorkerFactor too low for AsyncProxyMaxParked ---
sub started_log {
    my (%o) = @_;
    my $h = APX::Httpd->new(%o);
    $h->start;
    my $log = $h->slurp_log;
    my @err = $h->error_lines;
    $h->stop;
    return ($log, \@err);
}

{
    # defaults: 25 threads, factor 2 -> about 75 connections < 10000
    my ($log, $err) = started_log(mpm => 'event', threads => 25, factor => 2);
    my ($line) = $log =~ /^(.*APX00007.*)$/m;
    ok($line, '[event] factor 2 with the default AsyncProxyMaxParked 10000: APX00007 warning');
    like($line // '', qr/:warn\]/, '... at level warning');
    like($line // '', qr/AsyncRequestWorkerFactor 2 with ThreadsPerChild 25/, '... naming the configured values');
    like($line // '', qr/AsyncProxyMaxParked 10000/, '... and the limit');
    my ($need) = ($line // '') =~ /Set AsyncRequestWorkerFactor (\d+)/;
    ok($need, '... and the value to set') or diag $line;
    $need //= 0;
    cmp_ok(25 * (1 + $need), '>=', 10000, "... a value that is enough (25 x (1 + $need) >= 10000)");
    is_deeply($err, [], '... no error-level line');

    # the advice followed: no warning
    ($log, $err) = started_log(mpm => 'event', threads => 25, factor => $need || 1);
    unlike($log, qr/APX00007/, "[event] with AsyncRequestWorkerFactor $need as advised: no warning");
}
{
    # a lower AsyncProxyMaxParked: 10 threads, factor 2 -> 30 < 100
    my ($log) = started_log(mpm => 'event', threads => 10, factor => 2, global => 'AsyncProxyMaxParked 100');
    my ($line) = $log =~ /^(.*APX00007.*)$/m;
    ok($line, '[event] MaxParked 100, 10 threads, factor 2: APX00007');
    like($line // '', qr/below AsyncProxyMaxParked 100\b/, '... naming AsyncProxyMaxParked 100');
    my ($need) = ($line // '') =~ /Set AsyncRequestWorkerFactor (\d+)/;
    ok($need && 10 * (1 + $need) >= 100, "... advising a sufficient factor (" . ($need // 'none') . ")");

    ($log) = started_log(mpm => 'event', threads => 10, factor => 9, global => 'AsyncProxyMaxParked 100');
    unlike($log, qr/APX00007/, '[event] 10 x (1 + 9) = 100 >= MaxParked 100: no warning');
    ($log) = started_log(mpm => 'event', threads => 10, factor => 8, global => 'AsyncProxyMaxParked 100');
    like($log, qr/APX00007/, '[event] 10 x (1 + 8) = 90 < MaxParked 100: warning');
}
{
    # Httpd.pm's default factor 400 with 25 threads: 10025 >= 10000
    my ($log, $err) = started_log(mpm => 'event', threads => 25);
    unlike($log, qr/APX00007/, '[event] factor 400, 25 threads: no warning');
    is_deeply($err, [], '... and no error');
}
{
    # the worker MPM has no such limit: never warns
    my ($log, $err) = started_log(mpm => 'worker', threads => 25, global => 'AsyncProxyMaxParked 100000');
    unlike($log, qr/APX00007/, '[worker] no APX00007 (the MPM is not asynchronous)');
    like($log, qr/APX00004: synchronous mode/, '[worker] ... it runs in synchronous mode');
    is_deeply($err, [], '[worker] ... no error');
}

done_testing;
