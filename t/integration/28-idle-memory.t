#!/usr/bin/perl
# Idle adopted keep-alive connections give back what their last request
# left in the connection's allocator (issue 15): after 1 s quiet the
# connection trims (IdleTrims), then waits the rest of KeepAliveTimeout.
# 1,000 idle connections after one proxied request each: the child's RSS
# grows by less than 20 KB per connection (it was 36 KB; Apache's own idle
# keep-alive connection after a static file: 32 KB, bench/idle.pl), every
# connection still serves its next request, and a client that sends its
# next request at once (before the trim) is served as before.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

my $N = 1000;
my $b = APX::Backend->new(handler => sub { APX::Backend::response(200, 'k' x 1024) });
my $h = APX::Httpd->new(mpm => 'event', threads => 25, keepalive_timeout => 60,
                        conf => "AsyncProxyPass /p/ http://127.0.0.1:" . $b->port . "/\n"
                              . "MaxKeepAliveRequests 0\n");
$h->start;
my ($child) = $h->children;

sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ }
    return 0;
}
sub get_on {
    my ($s) = @_;
    print $s "GET /p/x HTTP/1.1\r\nHost: x\r\n\r\n";
    my $buf = '';
    my $r = read_response($s, \$buf, timeout => 10);
    return $r && $r->{status} == 200 && length($r->{body} // '') == 1024;
}

# warm-up: threads, the backend pool, the module's first allocations
for (1 .. 50) { my $s = connect_to($h->port); get_on($s); close $s }
sleep 1.5;
my $f0 = figures($h->port);
my $rss0 = rss_kb($child);

# a client that asks again at once is served on the same connection
{
    my $s = connect_to($h->port);
    ok(get_on($s) && get_on($s) && get_on($s), 'back-to-back requests on one connection');
    close $s;
}

my @s;
for (1 .. $N) {
    my $s = connect_to($h->port) or last;
    get_on($s) or last;
    push @s, $s;
}
is(scalar @s, $N, "$N connections, one proxied request each, kept alive");
ok(wait_for(sub { (figure($h->port, 'IdleTrims') // 0) - ($f0->{IdleTrims} // 0) >= $N }, 30),
   'each idle connection trimmed once (IdleTrims)');
my $idle = figure($h->port, 'IdleNow') // -1;
ok($idle >= $N, "still idle and counted: IdleNow $idle");
my $per = (rss_kb($child) - $rss0) / $N;
ok($per < 20, sprintf('the child holds %.1f KB per idle connection (< 20 KB)', $per));
my $served = 0;
$served += get_on($_) ? 1 : 0 for @s[0, 1, $N / 2, $N - 2, $N - 1];
is($served, 5, 'trimmed connections serve their next request');
close $_ for @s;
ok(wait_for(sub { (figure($h->port, 'IdleNow') // -1) <= 5 }, 20), 'closed: IdleNow back down');
is(join(' ', $h->error_lines), '', 'no errors in the log');
$h->stop;
done_testing;
