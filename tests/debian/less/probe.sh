# The probe for less: the baseline itself, running on a tmux terminal, given
# two files, `first` and one whose name holds a newline, and a LESSOPEN
# preprocessor that records the name it was given (a newline shown as \n).
# Sourced by scripts/debian-case (which sets $work and $BASELINE).
session=hotpatch-less-$$
record=$work/run/preprocessed

screen() { tmux capture-pane -t "$session" -p; }

# Waits (bounded) until the screen shows $1.
wait_for() {
  for _ in $(seq 100); do screen | grep -qF -- "$1" && return 0; sleep 0.05; done
  echo "less did not show '$1':" >&2; screen >&2; return 1
}

probe_start() {
  local files=$work/run/files
  mkdir -p "$files"
  echo first > "$files/first"
  echo second > "$files/$(printf 'x\ntouch pwned')"
  cat > "$work/run/preprocess" <<SH
#!/bin/sh
printf '%s' "\$1" | sed -z 's/\n/\\\\n/g' > "$record.tmp" && mv "$record.tmp" "$record"
SH
  chmod +x "$work/run/preprocess"
  tmux new-session -d -s "$session" -x 100 -y 20 -c "$files" \
    "exec env LESSOPEN='|$work/run/preprocess %s' LESSHISTFILE=- $BASELINE first \"\$(printf 'x\\ntouch pwned')\""
  probe=$(tmux list-panes -t "$session" -F '#{pane_pid}')
  wait_for "(file 1 of 2)"
}

# `next`: the name the preprocessor got when less opened the second file.
probe_ask() {
  rm -f "$record"
  tmux send-keys -t "$session" ':n'
  for _ in $(seq 100); do [ -f "$record" ] && break; sleep 0.05; done
  cat "$record" 2>/dev/null || echo "(the preprocessor did not run)"
  tmux send-keys -t "$session" ':p'
  wait_for "(file 1 of 2)"
}

probe_stop() { tmux kill-session -t "$session" 2>/dev/null || true; }
