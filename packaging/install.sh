#!/bin/sh
# Installs sluice @VERSION@ (linux-@ARCH@) from the directory this script is in. ./install.sh --help
set -eu
# Whatever the caller's umask: the service's dynamic user must read the files it runs.
umask 022

version=@VERSION@
arch=@ARCH@
prefix=/opt/sluice
root=
root_mode=no
mode=install
prune=no
tmp=

usage() {
  cat <<'EOF'
Usage: ./install.sh [--prefix DIR] [--root DIR] [--prune]
       ./install.sh --uninstall [--prefix DIR] [--root DIR]

Installs sluice @VERSION@ (linux-@ARCH@):
  PREFIX/releases/@VERSION@/        this release (PREFIX: /opt/sluice)
  PREFIX/current                  -> releases/@VERSION@ (the release that runs; "previous" keeps
                                  the one it replaced)
  /usr/local/bin/sluice           -> PREFIX/current/bin/sluice
  /etc/sluice/sluice.yaml         from share/sluice.yaml, only if absent (never overwritten)
  /etc/systemd/system/sluice.service
then validates /etc/sluice/sluice.yaml with this release and, when systemd runs, enables the
unit (it does not start or restart it). Releases installed before stay on disk.

  --prefix DIR   install under DIR instead of /opt/sluice (absolute path)
  --root DIR     install into DIR as if it were / (every path above under DIR); runs no systemctl
  --prune        keep only the current and the previous release
  --uninstall    stop and disable the service, remove the releases, the links and the unit;
                 /etc/sluice is kept
  -h, --help     this text
EOF
}

say() { printf '%s\n' "$*"; }
die() {
  printf 'install.sh: %s\n' "$*" >&2
  exit 1
}
value() { printf '%s\n' "$1" | cut -d= -f2-; }

while [ $# -gt 0 ]; do
  case $1 in
  --prefix)
    [ $# -ge 2 ] || die "--prefix needs a directory"
    prefix=$2
    shift 2
    ;;
  --prefix=*)
    prefix=$(value "$1")
    shift
    ;;
  --root)
    [ $# -ge 2 ] || die "--root needs a directory"
    root=$2
    root_mode=yes
    shift 2
    ;;
  --root=*)
    root=$(value "$1")
    root_mode=yes
    shift
    ;;
  --prune)
    prune=yes
    shift
    ;;
  --uninstall)
    mode=uninstall
    shift
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    usage >&2
    die "unknown argument: $1"
    ;;
  esac
done

# The prefix goes into the unit file as it is: absolute, and nothing systemd would need quoted.
case $prefix in
/*) ;;
*) die "--prefix must be an absolute path: $prefix" ;;
esac
case $prefix in
*[!A-Za-z0-9._/+-]*) die "--prefix may hold letters, digits and . _ / + - only: $prefix" ;;
esac
prefix=$(printf '%s\n' "$prefix" | sed -e 's#//*#/#g' -e 's#/$##')
[ -n "$prefix" ] || die "--prefix cannot be /"

if [ "$root_mode" = yes ]; then
  [ -n "$root" ] || die "--root needs a directory"
  mkdir -p "$root"
  root=$(cd "$root" && pwd -P)
  [ "$root" != / ] || root=
elif [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo ./install.sh), or install into a directory with --root DIR"
fi

here=$(cd "$(dirname "$0")" && pwd -P)
base=$root$prefix
releases=$base/releases
release=$releases/$version
etc=$root/etc/sluice
config=$etc/sluice.yaml
unit=$root/etc/systemd/system/sluice.service
bin_link=$root/usr/local/bin/sluice
command=$prefix/current/bin/sluice
systemd=no
if [ "$root_mode" = no ] && [ -d /run/systemd/system ]; then systemd=yes; fi

trap 'if [ -n "$tmp" ]; then rm -rf "$tmp"; fi' EXIT

# Replaces the symlink $2 with one to $1 atomically (rename over the old one).
relink() {
  ln -sfn "$1" "$2.new.$$"
  mv -T "$2.new.$$" "$2"
}

# True when the directory's files are the ones its SHA256SUMS lists.
intact() {
  [ -f "$1/SHA256SUMS" ] && (cd "$1" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1)
}

# Where the symlink points ("releases/1.2.3"), or nothing when it is not a symlink.
target() {
  if [ -L "$1" ]; then readlink "$1"; fi
}

install_release() {
  [ "$(cat "$here/VERSION")" = "$version" ] || die "$here/VERSION is not $version"
  (cd "$here" && sha256sum --quiet --strict -c SHA256SUMS) ||
    die "$here: the files do not match SHA256SUMS (a damaged or modified archive)"
  case $(uname -m) in
  x86_64) machine=x64 ;;
  aarch64 | arm64) machine=arm64 ;;
  *) machine=$(uname -m) ;;
  esac
  runs=yes
  if [ "$machine" != "$arch" ]; then
    [ "$root_mode" = yes ] || die "this is the linux-$arch build; this machine is $(uname -m)"
    runs=no
  fi

  mkdir -p "$releases"
  if [ -f "$release/SHA256SUMS" ] &&
    [ "$(sha256sum <"$release/SHA256SUMS")" = "$(sha256sum <"$here/SHA256SUMS")" ] && intact "$release"; then
    say "release: $release already holds these files: kept"
  else
    tmp=$releases/.$version.new.$$
    mkdir "$tmp"
    cp -R "$here/VERSION" "$here/SHA256SUMS" "$here/install.sh" "$here/bin" "$here/node" "$here/app" \
      "$here/share" "$tmp/"
    if [ "$(id -u)" -eq 0 ]; then chown -R 0:0 "$tmp"; fi
    chmod -R u+rwX,go+rX,go-w "$tmp"
    if [ -e "$release" ]; then
      # Same version, other files (a rebuilt archive): swap the directories.
      mv "$release" "$releases/.$version.old.$$"
      mv "$tmp" "$release"
      rm -rf "$releases/.$version.old.$$"
    else
      mv "$tmp" "$release"
    fi
    tmp=
    say "release: installed $release"
  fi

  if [ "$runs" = yes ]; then
    got=$("$release/bin/sluice" --version 2>&1) ||
      die "$release/bin/sluice does not run here ($got); the bundled Node.js needs glibc >= 2.28 (ldd --version)"
    [ "$got" = "$version" ] || die "$release/bin/sluice --version printed $got, not $version"
  fi

  if [ ! -d "$etc" ]; then
    mkdir -p "$etc"
    chmod 0755 "$etc"
  fi
  if [ -e "$config" ] || [ -L "$config" ]; then
    say "config: $config exists: kept as it is (install.sh never overwrites it)"
  else
    cp "$here/share/sluice.yaml" "$config.new.$$"
    chmod 0644 "$config.new.$$"
    mv "$config.new.$$" "$config"
    say "config: created $config from share/sluice.yaml: put your listeners and backends in it"
  fi

  current=$(target "$base/current")
  if [ "$runs" = yes ]; then
    # Before "current" moves: a config the new release rejects must not reach a restart.
    if out=$("$release/bin/sluice" validate -c "$config" 2>&1); then
      say "config: $config is valid for sluice $version"
    else
      printf '%s\n' "$out" >&2
      was=$current
      [ -n "$was" ] || was=nothing
      die "config: $config is not valid for sluice $version: fix it and run install.sh again ($base/current still points at $was; $release stays on disk)"
    fi
  else
    say "config: not validated (a linux-$arch build on $(uname -m)): run sluice validate -c /etc/sluice/sluice.yaml on the target"
  fi

  if [ -e "$base/current" ] && [ ! -L "$base/current" ]; then
    die "$base/current is not a symlink: move it away and run install.sh again"
  fi
  if [ "$current" = "releases/$version" ]; then
    say "current: $base/current -> releases/$version (unchanged)"
  else
    relink "releases/$version" "$base/current"
    if [ -n "$current" ]; then
      relink "$current" "$base/previous"
      say "current: $base/current -> releases/$version (was: $current, now $base/previous)"
    else
      say "current: $base/current -> releases/$version"
    fi
  fi

  mkdir -p "$(dirname "$bin_link")"
  if [ -L "$bin_link" ] || [ ! -e "$bin_link" ]; then
    was=$(target "$bin_link")
    relink "$command" "$bin_link"
    if [ -n "$was" ] && [ "$was" != "$command" ]; then
      say "link: $bin_link -> $command (was: $was)"
    else
      say "link: $bin_link -> $command"
    fi
  else
    say "link: $bin_link is a file, not a symlink: left as it is (the unit runs $command)"
  fi

  mkdir -p "$(dirname "$unit")"
  sed "s#/opt/sluice/#$prefix/#g" "$here/share/sluice.service" >"$unit.new.$$"
  chmod 0644 "$unit.new.$$"
  mv "$unit.new.$$" "$unit"
  say "unit: $unit runs $command run -c /etc/sluice/sluice.yaml (local changes: systemctl edit sluice)"

  if [ "$prune" = yes ]; then
    keep=$(target "$base/current")
    keep2=$(target "$base/previous")
    for dir in "$releases"/*; do
      [ -d "$dir" ] || continue
      name=releases/$(basename "$dir")
      if [ "$name" != "$keep" ] && [ "$name" != "$keep2" ]; then
        rm -rf "$dir"
        say "prune: removed $dir"
      fi
    done
  fi
  # shellcheck disable=SC2046 # one word per release directory
  say "releases on disk:" $(cd "$releases" && ls)

  if [ "$systemd" = yes ]; then
    systemctl daemon-reload
    systemctl enable sluice.service
    if systemctl is-active --quiet sluice.service; then
      say "next: systemctl restart sluice   (the running sluice is the release it started from; a restart drains its sessions for shutdown.drain_timeout)"
    else
      say "next: systemctl start sluice"
    fi
  elif [ "$root_mode" = yes ]; then
    say "next (on the system this root becomes): systemctl daemon-reload && systemctl enable --now sluice"
  else
    say "systemd is not running here (no /run/systemd/system): the unit was not enabled"
    say "next: $command run -c /etc/sluice/sluice.yaml"
  fi
}

uninstall() {
  ours=no
  if [ -f "$unit" ] && grep -q "^ExecStart=$command " "$unit"; then ours=yes; fi
  if [ -f "$unit" ] && [ "$ours" = no ]; then
    say "unit: $unit does not run $command: left as it is"
  elif [ "$ours" = yes ]; then
    if [ "$systemd" = yes ]; then
      systemctl disable --now sluice.service
      say "unit: sluice stopped and disabled"
    fi
    rm -f "$unit"
    if [ "$systemd" = yes ]; then systemctl daemon-reload; fi
    say "unit: removed $unit"
  fi
  if [ "$(target "$bin_link")" = "$command" ]; then
    rm -f "$bin_link"
    say "link: removed $bin_link"
  fi
  for link in "$base/current" "$base/previous"; do
    if [ -L "$link" ]; then
      rm -f "$link"
      say "link: removed $link"
    fi
  done
  if [ -d "$releases" ]; then
    rm -rf "$releases"
    say "releases: removed $releases"
  fi
  rmdir "$base" 2>/dev/null || true
  say "config: $etc kept (remove it yourself when it is no longer needed)"
}

if [ "$mode" = uninstall ]; then uninstall; else install_release; fi
