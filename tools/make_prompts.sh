#!/bin/sh
# Regenerate the shipped prompts in prompts/ (8 kHz mono WAV).
#
# The shipped files are stored G.711 µ-law (ENCODING=ulaw, 8 bits a sample),
# which halves their size and is exactly what a PCMU call carries anyway;
# pbx.media.wav reads them into 8 kHz 16-bit PCM at load. ENCODING=s16 gives
# 16-bit linear files instead (twice the size, same sound after G.711).
#
# Needs espeak-ng (speech) and sox (resampling, the beep, the hold music);
# on Debian: apt-get install espeak-ng sox. Everything is generated, so the
# files carry no third-party licence. Output is repeatable: sox runs without
# dither (-D), so the same tool versions give the same bytes.
#
#   tools/make_prompts.sh            # into prompts/ of this checkout
#   tools/make_prompts.sh DIR        # somewhere else
#   VOICE=en-gb SPEED=140 ENCODING=s16 tools/make_prompts.sh
set -eu

cd "$(dirname "$0")/.."
OUT=${1:-prompts}
VOICE=${VOICE:-en-us}
SPEED=${SPEED:-145}       # words per minute; espeak-ng's default of 175 is hurried on a phone
PITCH=${PITCH:-45}
ENCODING=${ENCODING:-ulaw}
case "$ENCODING" in
    ulaw) FORMAT="-b 8 -e u-law" ;;
    s16) FORMAT="-b 16 -e signed-integer" ;;
    *) echo "$0: ENCODING must be ulaw or s16" >&2; exit 2 ;;
esac

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$0: $tool is not installed" >&2; exit 1; }
done

mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# 8 kHz mono, telephone band, leading/trailing silence trimmed to a
# short pad, normalised to -3 dBFS.
to_phone() {
    # shellcheck disable=SC2086  # FORMAT is several options
    sox -D -V1 "$1" -r 8000 -c 1 $FORMAT "$2" \
        highpass 120 lowpass 3400 \
        silence 1 0.02 0.3% reverse silence 1 0.02 0.3% reverse \
        pad 0.05 0.15 gain -n -3
}

say() {  # say NAME "text"
    espeak-ng -v "$VOICE" -s "$SPEED" -p "$PITCH" -w "$TMP/say.wav" "$2"
    to_phone "$TMP/say.wav" "$OUT/$1.wav"
    echo "$OUT/$1.wav"
}

# Voicemail greeting, assembled per mailbox:
# "The person at extension" + digits + "is not available. Please leave a message after the tone." + beep
say vm-person-at-extension "The person at extension"
i=0
for word in zero one two three four five six seven eight nine; do
    say "digit-$i" "$word"
    i=$((i + 1))
done
say vm-not-available "is not available. Please leave a message after the tone."

# Mailbox login and menus.
say vm-enter-mailbox "Please enter your mailbox number followed by the pound key."
say vm-enter-pin "Please enter your PIN followed by the pound key."
say vm-invalid-pin "Invalid PIN."
say vm-you-have "You have"
say vm-no "no"
say vm-and "and"
say vm-new-message "new message."
say vm-new-messages "new messages."
say vm-saved-message "saved message."
say vm-saved-messages "saved messages."
# The keys here are the ones pbx/apps/voicemail.py acts on: change both together.
say vm-main-menu "For your new messages, press 1. For your saved messages, press 2. To record your greeting, press 3. To hear this menu again, press star. To end the call, press pound."
say vm-message-menu "To replay this message, press 5. For the next message, press 6. For the previous message, press 4. To delete it, press 7. To save it, press 9. For the main menu, press star."
say vm-record-greeting "Record your greeting after the tone, then press pound."
say vm-greeting-review "To keep this greeting, press 1. To record it again, press 2. To cancel, press star."
say vm-record-message "Record your message after the tone. When you are done, hang up or press pound."
say vm-greeting-saved "Your greeting has been saved."
say vm-message-saved "Message saved."
say vm-message-deleted "Message deleted."
say vm-no-more-messages "You have no more messages."
say goodbye "Goodbye."

# Auto attendant.
say aa-welcome "Welcome. For sales, press 1. For support, press 2. Or dial an extension."
say invalid-option "That is not a valid option. Please try again."
say aa-unavailable "Sorry, that extension is not available."

# The tone before recording: 1 kHz, 0.3 s, with 10 ms ramps so it does not click.
# shellcheck disable=SC2086
sox -D -V1 -n -r 8000 -c 1 $FORMAT "$OUT/beep.wav" synth 0.3 sine 1000 fade t 0.01 0.3 0.01 gain -6
echo "$OUT/beep.wav"

# Music on hold: a slow I-vi-IV-V progression in C (twice round, 3.75 s a chord,
# 30 s), each chord three soft sines over a plucked root, faded in and out so
# the loop point is quiet.
chord() {  # chord NAME root third fifth bass
    sox -D -V1 -n -r 8000 -c 4 -b 16 -e signed-integer "$TMP/$1.wav" \
        synth 3.75 sine "$2" sine "$3" sine "$4" pluck "$5" \
        remix 1v0.25,2v0.2,3v0.2,4v0.35 fade t 0.6 3.75 1.2
}
chord c  C4 E4 G4 C3
chord am A3 C4 E4 A2
chord f  F3 A3 C4 F2
chord g  G3 B3 D4 G2
sox -D -V1 "$TMP/c.wav" "$TMP/am.wav" "$TMP/f.wav" "$TMP/g.wav" \
    "$TMP/c.wav" "$TMP/am.wav" "$TMP/f.wav" "$TMP/g.wav" \
    -r 8000 -c 1 $FORMAT "$OUT/moh.wav" reverb 40 50 60 gain -n -6 fade t 0.5 30 1
echo "$OUT/moh.wav"
