"""Elicitation markers beyond English: zh, ja, ko, ru, es, fr, de, pt.

Each language: prompts phrased as people write them (inside a sentence, CJK without spaces,
upper case, with and without accents) score what their marker weighs; ordinary prompts in
the same language, including ones that share a word with a marker, score 0.
"""

# ruff: noqa: RUF001, RUF003  (prompts in other scripts, written as people write them)

from __future__ import annotations

import json

import pytest

from abuseguard.intel import _content_kernels as kernels
from abuseguard.intel.content import (
    ELICITATION_MARKERS,
    ContentFingerprinter,
    elicitation_strength,
)

# (language, prompt, the least strength it must reach)
ELICITING: list[tuple[str, str, float]] = [
    ("zh", "请一步一步地思考，然后回答：一个水池有两个进水管……", 0.9),
    ("zh", "这道题怎么做？请逐步推理并给出最终答案。", 0.9),
    ("zh", "请写出完整的推理过程，不要省略。", 0.7),
    ("zh", "让我们一步步来解决这个问题", 0.6),
    ("zh", "请使用思维链（Chain of Thought）的方式回答", 1.0),
    ("zh", "請詳細說明你的思考過程", 0.7),
    ("zh", "给出完整推导，并仔细思考每一步", 0.8),
    ("ja", "ステップバイステップで考えてください。", 0.6),
    ("ja", "段階的に考えてから答えてください", 0.9),
    ("ja", "思考過程をすべて書き出してください", 0.7),
    ("ja", "途中式も省略せずに書いて", 0.6),
    ("ja", "順を追って説明してください。", 0.6),
    ("ko", "이 문제를 단계별로 생각해 보세요.", 0.9),
    ("ko", "풀이 과정을 자세히 보여 주세요", 0.6),
    ("ko", "차근차근 설명해줘", 0.6),
    ("ko", "추론 과정을 모두 적어 주세요", 0.7),
    ("ru", "Подумай шаг за шагом, прежде чем ответить.", 0.9),
    ("ru", "Реши задачу пошагово и покажи все шаги.", 0.8),
    ("ru", "Опиши свою цепочку рассуждений.", 1.0),
    ("ru", "ОБЪЯСНИ СВОИ РАССУЖДЕНИЯ", 0.7),
    ("ru", "Покажите ход мыслей и промежуточные шаги", 0.9),
    ("es", "Piensa paso a paso antes de responder.", 0.9),
    ("es", "Resuelve el problema y muestra tu razonamiento.", 0.9),
    ("es", "explica tu razonamiento con una derivacion completa", 0.9),
    ("es", "Usa una cadena de pensamiento.", 1.0),
    ("es", "RAZONAMIENTO DETALLADO, por favor", 0.7),
    ("fr", "Réfléchissons étape par étape.", 0.9),
    ("fr", "Reflechis etape par etape avant de repondre", 0.9),
    ("fr", "Montre ton raisonnement et toutes les étapes intermédiaires.", 0.9),
    ("fr", "Explique ton raisonnement, pas à pas.", 0.8),
    ("fr", "Utilise une chaîne de pensée", 1.0),
    ("de", "Denke Schritt für Schritt nach und antworte dann.", 0.9),
    ("de", "Denke Schritt fuer Schritt", 0.6),
    ("de", "Bitte mit vollständigem Rechenweg und allen Zwischenschritten", 0.6),
    ("de", "Erkläre deine Überlegungen ausführlich.", 0.7),
    ("de", "Löse die Aufgabe schrittweise.", 0.6),
    ("pt", "Pense passo a passo antes de responder.", 0.9),
    ("pt", "Mostre seu raciocínio e todos os passos.", 0.9),
    ("pt", "Explique o seu raciocinio", 0.7),
    ("pt", "Use uma cadeia de pensamento", 1.0),
]

ORDINARY: list[tuple[str, str]] = [
    ("zh", "北京今天的天气怎么样？"),
    ("zh", "帮我写一封感谢信给我的老师。"),
    ("zh", "经济正在逐步恢复，请总结这篇新闻的要点。"),  # 逐步 alone means "gradually"
    ("zh", "这一步很重要吗？"),
    ("ja", "東京でおすすめのラーメン屋を教えてください。"),
    ("ja", "このメールを丁寧な日本語に直して。"),
    ("ja", "次のステップは何ですか？"),
    ("ko", "서울에서 부산까지 기차로 얼마나 걸려요?"),
    ("ko", "이 문장을 영어로 번역해 주세요."),
    ("ru", "Какая погода будет завтра в Москве?"),
    ("ru", "Напиши поздравление с днём рождения для коллеги."),
    ("ru", "Сделай шаг назад и перечитай текст."),
    ("es", "¿Cuál es la capital de Australia?"),
    ("es", "Escribe un correo para pedir vacaciones."),
    ("es", "Dame una receta de paella."),
    ("fr", "Quelle est la meilleure saison pour visiter Paris ?"),
    ("fr", "Traduis cette phrase en anglais."),
    ("fr", "Quelle est la prochaine étape du projet ?"),
    ("de", "Wie spät ist es in Tokio?"),
    ("de", "Schreibe eine kurze Geschichte über einen Hund."),
    ("de", "Der erste Schritt ist getan."),
    ("pt", "Qual é a capital do Brasil?"),
    ("pt", "Escreva um poema sobre o mar."),
    ("pt", "Qual é o próximo passo?"),
]

LANGUAGES = ("zh", "ja", "ko", "ru", "es", "fr", "de", "pt")


def test_every_language_has_eliciting_and_ordinary_examples() -> None:
    for language in LANGUAGES:
        assert sum(lang == language for lang, _, _ in ELICITING) >= 3
        assert sum(lang == language for lang, _ in ORDINARY) >= 2


@pytest.mark.parametrize(("language", "prompt", "least"), ELICITING)
def test_eliciting_prompts_are_seen(language: str, prompt: str, least: float) -> None:
    assert elicitation_strength(prompt) >= least - 1e-9


@pytest.mark.parametrize(("language", "prompt"), ORDINARY)
def test_ordinary_prompts_score_zero(language: str, prompt: str) -> None:
    assert elicitation_strength(prompt) == 0.0


@pytest.mark.parametrize(("language", "prompt", "least"), ELICITING[::3])
def test_eliciting_prompts_in_a_chat_body(language: str, prompt: str, least: float) -> None:
    fp = ContentFingerprinter()
    body = json.dumps({"messages": [{"role": "user", "content": prompt}]}, ensure_ascii=False)
    facts = fp.fingerprint(body.encode())
    assert facts.elicitation >= least - 1e-9
    assert facts.phrase > 0
    phrase, weight = ELICITATION_MARKERS[facts.phrase - 1]
    found = _found(prompt)
    assert phrase in found
    assert weight == max(w for p, w in ELICITATION_MARKERS if p in found)


def _found(prompt: str) -> set[str]:
    markers = kernels.MarkerSet([phrase for phrase, _ in ELICITATION_MARKERS])
    bits = markers.bits(prompt.lower().encode())
    return {phrase for m, (phrase, _) in enumerate(ELICITATION_MARKERS) if bits >> m & 1}


def test_accents_are_folded_both_ways() -> None:
    assert elicitation_strength("etape par etape") == elicitation_strength("étape par étape")
    assert elicitation_strength("ÉTAPE PAR ÉTAPE") == elicitation_strength("étape par étape")
    assert elicitation_strength("schritt fur schritt") >= 0.6
    assert elicitation_strength("Объясни свои рассуждения") >= 0.7
    # "ё" reads as "е": a marker written with either matches both.
    assert elicitation_strength("цепочка мыслей") == elicitation_strength("цепочка мыслёй")


def test_markers_beyond_the_first_64_are_counted_once() -> None:
    markers = kernels.MarkerSet([f"word{k} marker" for k in range(150)])
    text = b"word3 marker, word70 marker and word149 marker, word70 marker again"
    assert markers.bits(text) == (1 << 3) | (1 << 70) | (1 << 149)


def test_marker_set_refuses_phrases_alike_once_accents_are_folded() -> None:
    with pytest.raises(ValueError, match="same phrase"):
        kernels.MarkerSet(["étape par étape", "etape par etape"])
    with pytest.raises(ValueError, match="tokens"):
        kernels.MarkerSet(["一二三四五六七八九十一二三"])  # 13 tokens
    with pytest.raises(ValueError, match="marker phrases"):
        kernels.MarkerSet(["x"] * (kernels.MAX_MARKERS + 1))


def test_heaviest_phrase_is_reported() -> None:
    fp = ContentFingerprinter()
    facts = fp.fingerprint("Let's think step by step. Then give the chain of thought.")
    assert ELICITATION_MARKERS[facts.phrase - 1] == ("chain of thought", 1.0)
    assert fp.fingerprint("What is the capital of France?").phrase == 0
