"""How often does NSMC's unlabeled corpus use each sense of a Korean homonym? (docs/demo.md, "The sense probes")

A sense probe can only measure what pretraining could learn: a sense the corpus hardly uses cannot
be learned from it. This script counts, for each candidate word, the corpus lines that a pattern
assigns to each sense, and prints a random sample of one sense's lines for checking by hand (the
patterns are not perfect; docs/demo.md gives the precision of the hand-checked ones).

    python benchmarks/count_senses.py [--corpus ../shared/data/nsmc/unlabeled.txt.gz]
    python benchmarks/count_senses.py --sample 별:star --n 50 --seed 0

Every pattern starts the word at a word start (no Hangul syllable before it), so 배 does not count
배우 (actor) as a ship, and a sense's pattern names the context that makes the sense certain
(눈 followed by 내리다 / 쌓이다 is snow), so the counts are of lines whose sense the pattern can see.
A line counts once per sense however often it matches.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
from pathlib import Path

B = r"(?<![가-힣])"  # the word starts a word: no Hangul syllable before it
END = r"(?![가-힣])"  # ... and the form ends one
# Syllables that end in ㄴ (an adnominal ending: 괜찮은 편 "rather good", 재밌는 편)
N_FINAL = "".join(chr(0xAC00 + i) for i in range(11172) if i % 28 == 4)
COUNT = r"(?:[0-9]|반\s*개|한\s*개|두\s*개|세\s*개|네\s*개|열\s*개|몇\s*개|백\s*개|천\s*개|만\s*개|하나|다섯|여섯|일곱|여덟|아홉)"

# word -> sense -> pattern; a comment names what each pattern takes as the sign of its sense
CANDIDATES: dict[str, dict[str, str]] = {
    "눈": {
        "snow": B + r"눈(?:이|은|도)?\s*(?:내리|내린|내려|내렸|오는|온다|왔|쌓|덮|녹)|" + B + r"눈(?:사람|싸움|밭|보라|송이|썰매)"
                + r"|" + B + r"눈\s*덮인",
        # the eye idioms of reviews: can't take one's eyes off, eyes hurt/are pleased/dazzled, noticeable, in one's eyes
        "eye": B + r"눈(?:을|이|에|으로|도)?\s*(?:뗄|떼|떨어|감|뜨|뜬|떴|마주|즐겁|호강|아프|아팠|부시|부셔|띄|띈|띠|밟|돌리|들어|"
               + r"크|작|높|낮|빛|씻|의심|감아|맞추)|" + B + r"눈빛",
    },
    "별": {
        # the rating's star: 별 followed by a count (별 5개, 별 반개, 별 하나) or given/taken away
        "star": B + r"별\s*" + COUNT + r"|" + B + r"별(?:을|이)?\s*(?:주|줌|준|줬|줄|드리|드림|추가|빼|뺀|뺌)",
        # 別 "particular", mostly before a negation: 별 기대 없이, 별 내용 없다, 별 생각 없이, 별거 아니다
        "particular": B + r"별\s*(?:기대|생각|내용|재미|감흥|감동|의미|차이|느낌|매력|이유|볼\s*일|볼일|거|것|수|다른|다를|문제|"
                      + r"관심|흥미|긴장|반전|공감|특징|특색|인상|임팩트|스토리|사건|상관|부담|여운|개연성|소득|효과)",
    },
    "배": {
        "ship": B + r"배(?:를|가|에|에서|는|도|의)?\s*(?:타|탔|침몰|위|안에|안의|선장|항해|떠나)|" + B + r"배\s*(?:위|안)에서",
        "stomach": B + r"배(?:가|를)?\s*(?:아프|아파|아팠|잡|꼽|터지|고프|고파|불러|부르|부른|찢)|" + B + r"뱃살",
        "times": r"[0-9]\s*배" + END + r"|" + B + r"(?:두|세|네|몇|백|천|만|수십|수백|수천)\s*배" + END,
    },
    "말": {
        "speech": B + r"말(?:이|을|도|로|은|만)?\s*(?:필요|안\s*되|안되|했|한다|하는|하고|할|해|못|많|없|그대로)",
        "horse": B + r"말(?:을|이|의|과|들)?\s*(?:타|탔|달리|달려)|승마|" + B + r"마(?:구|굿)간",
    },
    "차": {
        "car": B + r"차(?:를|가|에|에서|는)?\s*(?:타|탔|몰|운전|사고|추격|폭발|안에|안에서|속|트렁크|문)",
        "tea": B + r"차(?:를|한|는)?\s*(?:마시|마셨|마신|한\s*잔|한잔)|" + B + r"(?:녹차|홍차|찻잔)",
    },
    "다리": {
        "leg": B + r"다리(?:가|를|에|는)?\s*(?:아프|아파|부러|다쳐|다친|절|길|꼬|벌리|떨|저리|짧|털|살|뼈)",
        "bridge": B + r"다리(?:가|를|에서|의)?\s*(?:위|밑|아래|건너|건넜|붕괴|무너|폭파|놓)",
    },
    "손": {
        "hand": B + r"손(?:에|을|이|으로)?\s*(?:땀|잡|쥐|놓|대|흔들|들|씻|발)|" + B + r"손(?:가락|목|바닥)",
        # 손 as a guest; 손님, its usual form, is another token and is counted apart below
        "guest": B + r"손(?:이|을)\s*(?:오|왔|맞|받)",
        "guest (손님)": B + r"손님",
    },
    "밤": {
        "night": B + r"밤(?:에|을|이|의|마다|새|늦게|하늘|거리|길|에도|엔|)" + END,
        "chestnut": B + r"(?:밤(?:송이|나무|알|을\s*까|을\s*구|까기)|군밤|알밤|생밤)",
    },
    "연기": {
        "acting": B + r"연기(?:력|자|파)|" + B + r"연기(?:가|도|는|를)?\s*(?:좋|잘|최고|훌륭|어색|못|발|대박|일품|쩔|짱|별로|굿|미친|압권|너무|정말|진짜)",
        # not 연기가 나(쁘다) nor 연기 속(에): acting
        "smoke": B + r"연기(?:가|를)?\s*(?:피어|자욱|뿜|내뿜|올라)|담배\s*연기|" + B + r"연기\s*냄새",
        "postponed": r"개봉(?:이|을|일이|일을)?\s*연기",
    },
    "편": {
        "installment": r"[0-9]\s*편" + END + r"|[0-9]\s*편(?:이|은|을|의|에|도|보다|부터|까지|만)" + END + r"|" + B
                       + r"(?:전|속|후|다음|이번|첫|마지막)\s*편" + END,
        "tendency": r"[" + N_FINAL + r"]\s+편(?:이다|인데|이었|이에요|임|이라|입니다|이지만|)" + END,
    },
}


def read_lines(corpus: Path) -> list[str]:
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def matching(lines: list[str], pattern: str) -> list[str]:
    compiled = re.compile(pattern)
    return [line for line in lines if compiled.search(line)]


def alone(lines: list[str], word: str, pattern: str) -> int:
    """Lines where a match holds ``word`` as a whole word (no Hangul after it either): the form
    whose tokens are the same in every sense."""
    compiled, whole = re.compile(pattern), re.compile(B + word + END)
    return sum(any(whole.search(line, m.start(), m.end() + 1) for m in compiled.finditer(line)) for line in lines)


def main() -> None:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nsmc" / "unlabeled.txt.gz"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=default)
    p.add_argument("--sample", help="WORD:SENSE: print a random sample of that sense's lines (to check by hand)")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    lines = read_lines(args.corpus)
    if args.sample:
        word, sense = args.sample.split(":")
        hits = matching(lines, CANDIDATES[word][sense])
        print(f"{len(hits):,} lines; a sample of {min(args.n, len(hits))} (seed {args.seed}):")
        compiled = re.compile(CANDIDATES[word][sense])
        for k, line in enumerate(random.Random(args.seed).sample(hits, min(args.n, len(hits))), 1):
            m = compiled.search(line)  # the match in [brackets], with 40 characters either side
            print(f"{k:3d} {line[max(0, m.start() - 40):m.start()]}[{m.group()}]{line[m.end():m.end() + 40]}")
        return
    print(f"{args.corpus}: {len(lines):,} non-blank lines\n")
    print("| word | lines with the word at a word start | sense: lines its pattern matches (of which the word stands alone) |")
    print("|---|---:|---|")
    for word, senses in CANDIDATES.items():
        anywhere = len(matching(lines, B + word))
        counts = ", ".join(f"{sense} {len(hits := matching(lines, pattern)):,} ({alone(hits, word, pattern):,})"
                           for sense, pattern in senses.items())
        print(f"| {word} | {anywhere:,} | {counts} |")


if __name__ == "__main__":
    main()
