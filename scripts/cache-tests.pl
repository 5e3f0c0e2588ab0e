#!/usr/bin/perl
# scripts/cache-tests.pl SUITE_DIR [--id TEST] [--out FILE.md]
#
# Runs the external RFC 9111 cache suite (http-tests/cache-tests, the one
# cache-tests.fyi publishes; a checkout in SUITE_DIR with `npm i` done —
# its code is not part of this tree) against mod_asyncproxy: the suite's
# origin server (node) on a free port of 127.0.0.1, Debian's apache2 with
# the module in front (`AsyncProxyPass / http://127.0.0.1:PORT/` and
# `AsyncProxyCache On`, one child, nothing else set), the suite's cli
# through it. Prints the required tests passed (those a reverse proxy can
# run: browser-only ones are not counted) and each one that did not pass;
# with --out, the same as a markdown summary. --id runs one test and prints
# its exchange. Stops what it started, by pid.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use APX::Httpd;
use File::Temp qw(tempdir);
use Getopt::Long;
use IO::Socket::INET;
use POSIX qw(strftime);
use Time::HiRes qw(sleep);

my %opt = (id => '');
GetOptions(\%opt, 'id=s', 'out=s') or die "usage: $0 SUITE_DIR [--id TEST] [--out FILE.md]\n";
my $suite = shift or die "usage: $0 SUITE_DIR [--id TEST] [--out FILE.md]\n";
-f "$suite/test-engine/cli.mjs" && -d "$suite/node_modules"
    or die "$suite: not a checkout of http-tests/cache-tests with its npm dependencies installed\n";

my $oport = APX::Httpd::free_port();
my $tmp = tempdir('apx-cache-tests-XXXXXX', TMPDIR => 1, CLEANUP => 1);
local $ENV{npm_config_port} = $oport;
local $ENV{npm_config_protocol} = 'http';
local $ENV{npm_config_pidfile} = "$tmp/origin.pid";
my $spid = fork // die "fork: $!";
if (!$spid) {
    chdir $suite or die;
    open STDOUT, '>', "$tmp/origin.log";
    open STDERR, '>&', \*STDOUT;
    exec 'node', 'test-engine/server/server.mjs';
    exit 127;
}
END { if ($spid) { kill 'TERM', $spid; waitpid $spid, 0 } }
my $h = APX::Httpd->new(servers => 1, server_limit => 1, threads => 25, loglevel => 'info', conf => <<"EOF");
AsyncProxyPass / http://127.0.0.1:$oport/
AsyncProxyCache On
EOF
$h->start;
for (1 .. 100) { last if IO::Socket::INET->new(PeerAddr => "127.0.0.1:$oport"); sleep 0.1 }

my $base = 'http://127.0.0.1:' . $h->port;
my $out = `cd '$suite' && npm_config_base='$base' npm_config_id='$opt{id}' npm_package_config_id='' node --no-warnings test-engine/cli.mjs 2>&1`;
$h->stop;
if ($opt{id}) { print $out; exit 0 }
open my $fh, '>', "$tmp/results.json" or die;
print $fh $out;
close $fh;

# the suite's own verdicts (test-engine/lib/results.mjs), required tests only
my $score = <<'JS';
import fs from 'fs'
const [suite, file] = process.argv.slice(2)
const tests = (await import(suite + '/tests/index.mjs')).default
const { determineTestResult, resultTypes } = await import(suite + '/test-engine/lib/results.mjs')
const res = JSON.parse(fs.readFileSync(file, 'utf8'))
let req = 0, pass = 0
const left = []
for (const s of tests) for (const t of s.tests) {
  if (!(t.kind === 'required' || t.kind === undefined) || t.browser_only) continue
  req++
  const r = determineTestResult(tests, t.id, res)
  if (r === resultTypes.pass) pass++
  else left.push(`${r[2]} ${t.id}: ${JSON.stringify(res[t.id])}`)
}
console.log(`required ${pass} / ${req}`)
for (const l of left) console.log(l)
JS
open my $js, '>', "$tmp/score.mjs" or die;
print $js $score;
close $js;
my $verdict = `node '$tmp/score.mjs' '$suite' '$tmp/results.json' 2>&1`;
$verdict =~ /^required (\d+) \/ (\d+)$/m or die "no verdict:\n$verdict\n" . substr($out, 0, 2000);
my ($pass, $req) = ($1, $2);
my @left = grep { !/^required / } split /\n/, $verdict;
my $rev = `git -C '$suite' log -1 --format=%h 2>/dev/null` || '?';
chomp $rev;
my $stamp = strftime('%Y-%m-%d %H:%M UTC', gmtime);
my $md = "# External RFC 9111 suite (http-tests/cache-tests $rev), $stamp\n\n"
       . "`scripts/cache-tests.pl SUITE_DIR`: the suite's cli through Apache + mod_asyncproxy "
       . "(one child, `AsyncProxyCache On`, nothing else set), its origin on 127.0.0.1.\n\n"
       . "**Required tests passed: $pass of $req** (browser-only tests not counted).\n\n"
       . (@left ? "Not passed:\n\n" . join('', map { "- $_\n" } @left) : '');
print $md;
if ($opt{out}) { open my $o, '>', $opt{out} or die "$opt{out}: $!"; print $o $md; close $o }
