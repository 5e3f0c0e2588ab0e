#!/usr/bin/perl
# AsyncProxyPassReverse PATH balancer://NAME/BASE: a Location (or
# Content-Location) naming any member's origin followed by BASE is rewritten
# to PATH on this server, as mod_proxy's ProxyPassReverse with a balancer
# URL does; another origin, or a member's origin outside BASE, is left as it
# is. Real backends (APX::Backend) that redirect to their own URL; asserted
# on the headers the client got. Also the configtest errors of the form.
# And AsyncProxyMember status=drain (mod_proxy's status=+N): the member
# takes only requests of its own sticky route, shows state=draining, and
# a group whose every member drains answers 503.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use APX::Httpd;
use APX::Backend;
use APX::Client qw(:all);

# Each backend redirects /v1/go to its own absolute URL, and /v1/out to a
# URL outside the mapped base.
my @be;
for my $i (0 .. 1) {
    push @be, APX::Backend->new(handler => sub {
        my ($req, $conn) = @_;
        my $self = 'http://127.0.0.1:' . $conn->{sock}->sockport;
        return APX::Backend::response(302, "moved\n", Location => "$self/v1/there?m=$i",
                                      'Content-Location' => "$self/v1/c$i.html")
            if $req->{target} =~ m{^/v1/go};
        return APX::Backend::response(302, "moved\n", Location => "$self/other/x")
            if $req->{target} =~ m{^/v1/out};
        return APX::Backend::response(200, "member $i\n");
    });
}
my $h = APX::Httpd->new(conf => <<"EOF");
AsyncProxyPass /app/ balancer://grp/v1/
AsyncProxyPassReverse /app/ balancer://grp/v1/
<AsyncProxyBalancer grp>
    AsyncProxyMember http://127.0.0.1:@{[ $be[0]->port ]}
    AsyncProxyMember http://127.0.0.1:@{[ $be[1]->port ]}
    AsyncProxyBalancerSet lbmethod=wrr
</AsyncProxyBalancer>
AsyncProxyPass /dr/ balancer://drn/v1/
<AsyncProxyBalancer drn>
    AsyncProxyMember http://127.0.0.1:@{[ $be[0]->port ]} route=r0
    AsyncProxyMember http://127.0.0.1:@{[ $be[1]->port ]} route=r1 status=drain
    AsyncProxyBalancerSet stickysession=JSESSIONID
</AsyncProxyBalancer>
AsyncProxyPass /all/ balancer://alldr/v1/
<AsyncProxyBalancer alldr>
    AsyncProxyMember http://127.0.0.1:@{[ $be[0]->port ]} status=+N
</AsyncProxyBalancer>
EOF
$h->start;
my $HP = $h->port;

my %seen;
for (1 .. 8) {
    my $r = http_request($HP, 'GET', '/app/go');
    is($r && $r->{status}, 302, '302 through the group') or next;
    my $loc = $r->{headers}{location} // '';
    like($loc, qr{^(?:http://127\.0\.0\.1:$HP)?/app/there\?m=([01])$}, "Location rewritten to this server's /app/ ($loc)");
    $seen{$1}++ if $loc =~ /m=([01])$/;
    like($r->{headers}{'content-location'} // '', qr{^(?:http://127\.0\.0\.1:$HP)?/app/c[01]\.html$}, '... and Content-Location');
}
is(scalar(keys %seen), 2, 'both members answered, and each one\'s own URL was rewritten: ' . join(', ', map { "m$_: $seen{$_}" } sort keys %seen));

# drain
my @n0 = map { scalar grep { $_->{target} =~ m{^/v1/d} } $_->requests } @be;
my $ok = 0;
for (1 .. 20) { my $x = http_request($HP, 'GET', '/dr/d'); $ok++ if $x && $x->{status} == 200 }
is($ok, 20, 'status=drain: 20 requests without a route answered');
my @n1 = map { scalar grep { $_->{target} =~ m{^/v1/d} } $_->requests } @be;
is($n1[0] - $n0[0], 20, '... all by the member in service');
is($n1[1] - $n0[1], 0, '... none by the draining one');
my $x = http_request($HP, 'GET', '/dr/d', headers => ['Cookie' => 'JSESSIONID=abc.r1']);
is($x && $x->{body}, "member 1\n", "... which still takes its own sticky route's request");
my $st = http_request($HP, 'GET', '/apx-status');
like($st && $st->{body}, qr/^AsyncProxyMember: balancer=drn .*route=r1 .*state=draining/m, '... and shows state=draining');
$x = http_request($HP, 'GET', '/all/d');
is($x && $x->{status}, 503, 'a group whose every member drains: 503');

my $r = http_request($HP, 'GET', '/app/out');
like($r && $r->{headers}{location} // '', qr{^http://127\.0\.0\.1:\d+/other/x$}, 'a member URL outside the base stays as it is');
ok($h->stop, 'server stops');
is_deeply([$h->error_lines(qr/APX00131/)], [], "no error-log line at level error or above (but the 503's)");

# configtest
my @bad = (
    ["AsyncProxyPassReverse /x/ balancer://nope/v1/\n",
     qr{AsyncProxyPassReverse /x/ balancer://nope/v1/ \(.*\): unknown balancer 'nope'}],
    ["AsyncProxyPassReverse /x/ balancer:///v1/\n",
     qr{AsyncProxyPassReverse: invalid value 'balancer:///v1/': no balancer name}],
    ["<AsyncProxyBalancer b>\nAsyncProxyMember http://127.0.0.1:1 status=sleepy\n</AsyncProxyBalancer>\n",
     qr{AsyncProxyMember: invalid value 'sleepy' for option status= \(drain or \+N}],
    ["AsyncProxyPassReverse /x/ ftp://h/\n",
     qr{AsyncProxyPassReverse: invalid value 'ftp://h/': not an http://, https:// or balancer:// URL}],
);
for my $b (@bad) {
    my $t = APX::Httpd->new(conf => $b->[0]);
    my ($rc, $out) = $t->configtest;
    isnt($rc, 0, "configtest refuses: $b->[0]");
    like($out, $b->[1], '... naming the directive and the value');
}
$_->stop for @be;
done_testing;
